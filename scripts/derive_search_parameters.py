"""Derives fhir_server/search/data/search_parameters.json from the official R4 SearchParameter bundle.

Source: Bundle-searchParams.json of the npm package hl7.fhir.r4.examples@4.0.1 (CC0). For every resource
type the hub serves, each parameter keeps its type, modifiers, comparators, targets, components and the
parts of its FHIRPath expression that apply to that type. ``X.where(resolve() is T)`` (no FHIRPath engine
can resolve references offline) becomes the part ``X`` with the reference-type filter ``T``.

Run: scripts/fetch-fhir-examples.sh && .venv/bin/python scripts/derive_search_parameters.py
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fhir_server.model.types import SUPPORTED_TYPES  # noqa: E402

BUNDLE = ROOT / ".cache" / "fhir-r4-examples" / "package" / "Bundle-searchParams.json"
OUT = ROOT / "fhir_server" / "search" / "data" / "search_parameters.json"
_RESOLVE_IS = re.compile(r"^(?P<path>.+)\.where\(resolve\(\) is (?P<type>[A-Z][A-Za-z]+)\)$")


def split_union(expression: str) -> list[str]:
    """Split a FHIRPath expression on its top-level ``|`` operators."""
    parts: list[str] = []
    depth = 0
    start = 0
    quoted = False
    for i, ch in enumerate(expression):
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch in "([":
            depth += 1
        elif not quoted and ch in ")]":
            depth -= 1
        elif not quoted and ch == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


def _applies_to(part: str, rtype: str) -> bool:
    head = part.lstrip("(")
    return head.startswith((f"{rtype}.", "Resource.", "DomainResource.")) or head == rtype


def _path_entry(part: str) -> dict[str, str]:
    m = _RESOLVE_IS.match(part)
    if m:
        return {"expression": m.group("path"), "is": m.group("type")}
    return {"expression": part}


def derive() -> dict[str, Any]:
    bundle = json.loads(BUNDLE.read_text(encoding="utf-8"))
    per_type: dict[str, dict[str, Any]] = {t: {} for t in sorted(SUPPORTED_TYPES)}
    skipped: list[str] = []
    for entry in bundle["entry"]:
        sp = entry["resource"]
        expression = sp.get("expression")
        if not expression:
            skipped.append(sp["code"])  # _text, _content, _query...: no FHIRPath, not indexable
            continue
        bases = sp["base"]
        types = sorted(SUPPORTED_TYPES) if bases[0] in ("Resource", "DomainResource") else bases
        for rtype in types:
            if rtype not in per_type:
                continue
            # FHIRPath's Resource.x means x of whatever type the resource is: name the type (fhirpathpy does not
            # resolve the type hierarchy, and the fast extractor needs the concrete type)
            parts = [re.sub(r"^(\(?)(?:Resource|DomainResource)\.", rf"\g<1>{rtype}.", p)
                     for p in split_union(expression) if _applies_to(p, rtype)]
            if not parts:
                continue
            definition: dict[str, Any] = {
                "url": sp["url"], "type": sp["type"], "paths": [_path_entry(p) for p in parts],
            }
            for key in ("target", "modifier", "comparator"):
                if sp.get(key):
                    definition[key] = sp[key]
            if sp.get("component"):
                definition["component"] = [{"definition": c["definition"], "expression": c["expression"]}
                                           for c in sp["component"]]
            per_type[rtype][sp["code"]] = definition
    return {
        "source": "hl7.fhir.r4.examples@4.0.1 Bundle-searchParams.json (CC0); scripts/derive_search_parameters.py",
        "without_expression": sorted(set(skipped)),
        "types": per_type,
    }


def main() -> None:
    data = derive()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, indent=1, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    count = sum(len(v) for v in data["types"].values())
    print(f"{count} (type, parameter) definitions for {len(data['types'])} types -> {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
