"""The search parameters of each resource type, loaded as data from the official R4 definitions.

``data/search_parameters.json`` is derived by ``scripts/derive_search_parameters.py`` from the CC0
SearchParameter bundle of hl7.fhir.r4.examples@4.0.1; nothing here is hand-maintained.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from fhir_server.model.types import SUPPORTED_TYPES

__all__ = ["CODE_RE", "Component", "PathPart", "SearchParameter", "custom_codes", "definitions_of", "generation",
           "indexed_as", "parameters_for", "set_custom"]

# what a search parameter's code may hold: it names the parameter in search URLs (``.`` chains, ``:`` takes a
# modifier, ``,`` and ``|`` separate values) and in index keys (search/keys.py: ``|`` separates their parts, a space the
# items of a version's entries, ``@`` a date within a status); every official code is of these characters
CODE_RE = re.compile(r"[A-Za-z0-9_-]+")
_RESOLVE_IS = re.compile(r"^(?P<path>.+)\.where\(resolve\(\) is (?P<type>[A-Z][A-Za-z]+)\)$")
_custom: dict[str, dict[str, dict[str, Any]]] = {}  # type -> code -> definition, from SearchParameter resources
_generation = 0


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


def split_top_level(expression: str, separator: str) -> list[str]:
    """Split a FHIRPath expression at ``separator`` where it is not inside brackets, parentheses or a quoted
    string (single quotes or backticks); the parts are stripped."""
    parts: list[str] = []
    depth = 0
    start = 0
    quote = ""
    for i, ch in enumerate(expression):
        if quote:
            if ch == quote and expression[i - 1] != "\\":
                quote = ""
        elif ch in "'`":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == separator and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
    parts.append(expression[start:].strip())
    return parts


def split_union(expression: str) -> list[str]:
    """Split a FHIRPath expression on its top-level ``|`` operators."""
    return [p for p in split_top_level(expression, "|") if p]


def _applies_to(part: str, rtype: str) -> bool:
    head = part.lstrip("(")
    return head.startswith((f"{rtype}.", "Resource.", "DomainResource.")) or head == rtype


def _path_entry(part: str) -> dict[str, str]:
    m = _RESOLVE_IS.match(part)
    if m:
        return {"expression": m.group("path"), "is": m.group("type")}
    return {"expression": part}


def definitions_of(sp: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-type definitions of one SearchParameter resource (type -> definition; empty without a
    FHIRPath expression). ``X.where(resolve() is T)`` becomes the part ``X`` with the reference filter ``T``
    (no FHIRPath engine can resolve references offline)."""
    expression = sp.get("expression")
    if not expression or not sp.get("base"):
        return {}
    bases = sp["base"]
    types = sorted(SUPPORTED_TYPES) if bases[0] in ("Resource", "DomainResource") else bases
    out: dict[str, dict[str, Any]] = {}
    for rtype in types:
        if rtype not in SUPPORTED_TYPES:
            continue
        # FHIRPath's Resource.x means x of whatever type the resource is: name the type (fhirpathpy does not
        # resolve the type hierarchy, and the fast extractor needs the concrete type)
        parts = [re.sub(r"^(\(?)(?:Resource|DomainResource)\.", rf"\g<1>{rtype}.", p)
                 for p in split_union(expression) if _applies_to(p, rtype)]
        if not parts:
            continue
        definition: dict[str, Any] = {"url": sp.get("url", ""), "type": sp["type"],
                                      "paths": [_path_entry(p) for p in parts]}
        for key in ("target", "modifier", "comparator"):
            if sp.get(key):
                definition[key] = sp[key]
        if sp.get("component"):
            definition["component"] = [{"definition": c["definition"], "expression": c["expression"]}
                                       for c in sp["component"]]
        out[rtype] = definition
    return out


def set_custom(resources_: list[dict[str, Any]]) -> None:
    """Make these SearchParameter resources (the active ones of the store) the custom parameters.

    A custom parameter adds to the official ones; it never replaces an official code of a type."""
    custom: dict[str, dict[str, dict[str, Any]]] = {}
    for sp in resources_:
        if sp.get("status") == "retired" or not isinstance(sp.get("code"), str) or not CODE_RE.fullmatch(sp["code"]):
            continue  # a code refused since (service/resources.py), stored by an older hub: never indexed
        for rtype, definition in definitions_of(sp).items():
            if sp["code"] not in _data()["types"].get(rtype, {}):
                custom.setdefault(rtype, {})[sp["code"]] = definition
    global _generation
    if custom != _custom:
        _custom.clear()
        _custom.update(custom)
        parameters_for.cache_clear()
        _derived.cache_clear()
        _generation += 1


def generation() -> int:
    """Changes whenever the custom parameters do (for caches built from the registry)."""
    return _generation


def custom_codes(rtype: str) -> list[str]:
    return sorted(_custom.get(rtype, {}))


@cache
def parameters_for(rtype: str) -> dict[str, SearchParameter]:
    """Every search parameter of ``rtype`` by code, official and custom (empty for an unknown type)."""
    out: dict[str, SearchParameter] = {}
    for code, d in {**_data()["types"].get(rtype, {}), **_custom.get(rtype, {})}.items():
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
