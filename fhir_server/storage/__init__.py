"""Storage: the MongoDB-wire document store behind the service layer (nothing else imports it directly)."""

from __future__ import annotations

from fhir_server.storage.mongo import connect
from fhir_server.storage.versions import HistoryPage, LockBusy, ResourceStore, Version, VersionConflict, now_micros

__all__ = ["HistoryPage", "LockBusy", "ResourceStore", "Version", "VersionConflict", "connect", "now_micros"]
