"""The service layer: the only path by which anything is read or written."""

from __future__ import annotations

from fhir_server.service.bundles import BundleService
from fhir_server.service.resources import HistoryResult, ResourceService, WriteResult, instant

__all__ = ["BundleService", "HistoryResult", "ResourceService", "WriteResult", "instant"]
