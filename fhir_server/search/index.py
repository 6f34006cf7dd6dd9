"""The index entries stored beside the current version (``ix``), computed by the service layer at write time.

Today the ``identifier`` tokens that conditional operations match on; built with the same token rules as
every other search parameter (``entries.tokens_of``).
"""

from __future__ import annotations

from typing import Any

from fhir_server.search.entries import tokens_of

__all__ = ["index_entries"]


def index_entries(resource: dict[str, Any]) -> dict[str, Any]:
    found = resource.get("identifier")
    items = found if isinstance(found, list) else [found] if isinstance(found, dict) else []
    tokens = sorted({t for item in items if isinstance(item, dict) for t in tokens_of(item)})
    return {"identifier": tokens} if tokens else {}
