"""The search parameters of each resource type, loaded as data from the official R4 definitions.

``data/search_parameters.json`` is derived by ``scripts/derive_search_parameters.py`` from the CC0
SearchParameter bundle of hl7.fhir.r4.examples@4.0.1; nothing here is hand-maintained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["Component", "PathPart", "SearchParameter", "parameters_for"]


@dataclass(frozen=True, slots=True)
class PathPart:
    """One ``|``-separated part of a parameter's expression for one type."""

    expression: str
    resolve_is: str | None = None  # from X.where(resolve() is T): keep references to type T only


@dataclass(frozen=True, slots=True)
class Component:
    definition: str
    expression: str


@dataclass(frozen=True, slots=True)
class SearchParameter:
    code: str
    url: str
    type: str  # number | date | string | token | reference | composite | quantity | uri | special
    paths: tuple[PathPart, ...]
    targets: tuple[str, ...] = ()
    modifiers: tuple[str, ...] = ()
    comparators: tuple[str, ...] = ()
    components: tuple[Component, ...] = ()


@cache
def _data() -> dict[str, Any]:
    text = resources.files("fhir_server.search").joinpath("data/search_parameters.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def parameters_for(rtype: str) -> dict[str, SearchParameter]:
    """Every search parameter of ``rtype`` by code (empty for an unknown type)."""
    out: dict[str, SearchParameter] = {}
    for code, d in _data()["types"].get(rtype, {}).items():
        out[code] = SearchParameter(
            code=code, url=d["url"], type=d["type"],
            paths=tuple(PathPart(p["expression"], p.get("is")) for p in d["paths"]),
            targets=tuple(d.get("target", ())), modifiers=tuple(d.get("modifier", ())),
            comparators=tuple(d.get("comparator", ())),
            components=tuple(Component(c["definition"], c["expression"]) for c in d.get("component", ())),
        )
    return out
