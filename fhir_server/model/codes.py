"""Codes that FHIR R4 requires from a fixed value set (``required`` bindings on ``code`` elements).

The structural model accepts any string as a ``code``; R4 does not (terminologies.html#required): a Patient with
``gender: "M"`` is not conformant, and no ``gender=male`` search would ever find it. Where to look and what is
allowed come from ``data/required_codes.json`` (derived from the R4 definitions by
``scripts/derive_required_codes.py``): a tree per resource type and datatype, keyed by JSON property name.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from fhir_server.errors import Issue

__all__ = ["code_issues"]

_DATA = json.loads(resources.files("fhir_server.model").joinpath("data/required_codes.json").read_text("utf-8"))
_VALUE_SETS: dict[str, frozenset[str]] = {url: frozenset(codes) for url, codes in _DATA["valueSets"].items()}
_TYPES: dict[str, dict[str, Any]] = _DATA["types"]
_LISTED = 12  # value sets up to this size are spelled out in the message


def code_issues(resource: dict[str, Any]) -> list[Issue]:
    """One issue per code outside its required value set, located by FHIRPath (``Patient.contact[0].gender``);
    resources inside it (``contained``, a Bundle's entries) included. The message names the value set, never
    the value sent."""
    rtype = resource.get("resourceType")
    out: list[Issue] = []
    if isinstance(rtype, str):
        _walk(_TYPES.get(rtype), resource, rtype, out)
    return out


def _walk(node: dict[str, Any] | None, value: Any, path: str, out: list[Issue]) -> None:
    if node is None or not isinstance(value, dict):
        return
    for key, spec in node.items():
        found = value.get(key)
        if found is None:
            continue
        several = isinstance(found, list)
        for i, item in enumerate(found if several else [found]):
            where = f"{path}.{key}[{i}]" if several else f"{path}.{key}"
            if isinstance(spec, dict):
                _walk(spec, item, where, out)
            elif spec[0] == "=":
                allowed = _VALUE_SETS[spec[1:]]
                if isinstance(item, str) and item not in allowed:
                    listed = f" ({' | '.join(sorted(allowed))})" if len(allowed) <= _LISTED else ""
                    out.append(Issue(code="code-invalid", expression=(where,),
                                     diagnostics=f"Not a code of the required value set {spec[1:]}{listed}"))
            elif spec[0] == "@":
                _walk(_TYPES.get(spec[1:]), item, where, out)
            elif spec == "!":  # a resource inside this one: its own type's codes
                inner = item.get("resourceType") if isinstance(item, dict) else None
                _walk(_TYPES.get(inner) if isinstance(inner, str) else None, item, where, out)
            else:  # "#Questionnaire.item": the element repeats the definition of another one
                _walk(_node_at(spec[1:]), item, where, out)


@cache
def _node_at(path: str) -> dict[str, Any] | None:
    first, *rest = path.split(".")
    node: Any = _TYPES.get(first)
    for key in rest:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None
