"""Typed index entries of a resource, computed by the service layer at write time."""

from __future__ import annotations

from typing import Any

__all__ = ["ANY_SYSTEM", "index_entries"]

# token stored for "identifier=value" (any system); FHIR R4 search.html#token
ANY_SYSTEM = "\u0000"


def _identifier_tokens(resource: dict[str, Any]) -> list[str]:
    found = resource.get("identifier")
    items = found if isinstance(found, list) else [found] if isinstance(found, dict) else []
    tokens: list[str] = []
    for ident in items:
        if not isinstance(ident, dict) or not isinstance(ident.get("value"), str):
            continue
        system = ident.get("system") if isinstance(ident.get("system"), str) else ""
        tokens.append(f"{system}|{ident['value']}")
        tokens.append(f"{ANY_SYSTEM}|{ident['value']}")
    return tokens


def index_entries(resource: dict[str, Any]) -> dict[str, Any]:
    """Index entries stored beside the current version (``ix`` in the store)."""
    entries: dict[str, Any] = {}
    tokens = _identifier_tokens(resource)
    if tokens:
        entries["identifier"] = tokens
    return entries
