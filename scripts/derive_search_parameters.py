"""Derives fhir_server/search/data/search_parameters.json from the official R4 SearchParameter bundle.

Source: Bundle-searchParams.json of the npm package hl7.fhir.r4.examples@4.0.1 (CC0). For every resource
type the hub serves, each parameter keeps its type, modifiers, comparators, targets, components and the
parts of its FHIRPath expression that apply to that type. ``X.where(resolve() is T)`` (no FHIRPath engine
can resolve references offline) becomes the part ``X`` with the reference-type filter ``T``.

Run: scripts/fetch-fhir-examples.sh && .venv/bin/python scripts/derive_search_parameters.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fhir_server.model.types import SUPPORTED_TYPES  # noqa: E402
from fhir_server.search.registry import definitions_of  # noqa: E402

BUNDLE = ROOT / ".cache" / "fhir-r4-examples" / "package" / "Bundle-searchParams.json"
OUT = ROOT / "fhir_server" / "search" / "data" / "search_parameters.json"


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
        for rtype, definition in definitions_of(sp).items():
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
