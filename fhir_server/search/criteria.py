"""Parsing of the search criteria that conditional create/update/delete carry (``If-None-Exist``, URL query)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fhir_server.errors import BadRequest, Issue
from fhir_server.model.types import ID_RE
from fhir_server.search.entries import ANY_SYSTEM

__all__ = ["SUPPORTED_PARAMETERS", "Criteria", "parse_criteria"]

SUPPORTED_PARAMETERS = ("_id", "identifier")
# parameters that shape a result and never select resources (FHIR R4 search.html#other)
_RESULT_PARAMETERS = {"_format", "_pretty", "_summary", "_elements", "_count", "_cursor"}


@dataclass(frozen=True, slots=True)
class Criteria:
    """A parsed conjunction of criteria: ``ids`` (from ``_id``) and store filters (AND of ORs)."""

    text: str  # canonical form, the name of the lock that guards match-then-write
    ids: frozenset[str] | None
    filters: tuple[dict[str, Any], ...]

    def store_query(self) -> dict[str, Any]:
        clauses: list[dict[str, Any]] = list(self.filters)
        if self.ids is not None:
            clauses.append({"i": {"$in": sorted(self.ids)}})
        return {"$and": clauses} if clauses else {}


def _token(value: str) -> str:
    if "|" not in value:
        return f"{ANY_SYSTEM}|{value}"
    return value  # "system|value" or "|value" (no system), as stored


def parse_criteria(rtype: str, query: str, *, allow_empty: bool = False) -> Criteria:
    """Parse ``identifier=system|value&_id=...``; anything else is refused with a clear 400.

    ``allow_empty``: no criteria selects every resource of the type (a search); conditional operations
    must name criteria.
    """
    query = query.split("?", 1)[1] if "?" in query else query  # If-None-Exist may carry "Type?criteria"
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in _RESULT_PARAMETERS]
    if not pairs and allow_empty:
        return Criteria(text=f"{rtype}?", ids=None, filters=())
    if not pairs:
        raise BadRequest("A conditional operation needs search criteria", issues=[
            Issue(code="required", diagnostics="A conditional operation needs search criteria, e.g. "
                  "identifier=system|value")])
    ids: set[str] | None = None
    filters: list[dict[str, Any]] = []
    for name, value in pairs:
        if not value:
            raise BadRequest(f"Search parameter '{name}' has no value")
        values = [v for v in value.split(",") if v]
        if name == "_id":
            bad = [v for v in values if not ID_RE.match(v)]
            if bad:
                raise BadRequest("_id values must be FHIR ids", issues=[
                    Issue(code="value", diagnostics="_id values must be FHIR ids (A-Z a-z 0-9 - ., 1-64)")])
            ids = set(values) if ids is None else ids & set(values)
        elif name == "identifier":
            filters.append({"ix.identifier": {"$in": [_token(v) for v in values]}})
        else:
            raise BadRequest(f"Search parameter '{name}' is not supported yet", issues=[
                Issue(code="not-supported", diagnostics=f"Search parameter '{name}' is not supported yet; "
                      f"this hub searches by {', '.join(SUPPORTED_PARAMETERS)}")])
    canonical = "&".join(f"{k}={v}" for k, v in sorted(pairs))
    return Criteria(text=f"{rtype}?{canonical}", ids=None if ids is None else frozenset(ids), filters=tuple(filters))
