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

__all__ = ["Component", "PathPart", "SearchParameter", "indexed_as", "parameters_for"]


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


@cache
def _derived(rtype: str) -> dict[str, tuple[str, str]]:
    """Reference parameters that are another one restricted to a target type, e.g. Observation ``patient``
    (``Observation.subject.where(resolve() is Patient)``) is ``subject`` for ``Patient/...`` values: code ->
    (base code, type). Their entries are the base's (one index document instead of two)."""
    params = parameters_for(rtype)
    out: dict[str, tuple[str, str]] = {}
    for code, p in params.items():
        targets = {part.resolve_is for part in p.paths}
        if p.type != "reference" or not p.paths or len(targets) != 1 or None in targets:
            continue
        expressions = [part.expression for part in p.paths]
        for base_code, base in sorted(params.items()):
            if (base_code != code and base.type == "reference" and [b.expression for b in base.paths] == expressions
                    and not any(b.resolve_is for b in base.paths)):
                target = targets.pop()
                assert target is not None
                out[code] = (base_code, target)
                break
    return out


def indexed_as(rtype: str, code: str) -> tuple[str, str | None]:
    """The parameter whose index entries serve ``code``, and the reference type they are restricted to."""
    found = _derived(rtype).get(code)
    return found if found is not None else (code, None)
