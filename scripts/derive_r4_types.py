"""Derives fhir_server/model/r4_resource_types.json from the official R4 StructureDefinitions.

Run: scripts/fetch-fhir-examples.sh && python scripts/derive_r4_types.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / ".cache" / "fhir-r4-examples" / "package"


def main() -> None:
    types = set()
    for path in PACKAGE.glob("StructureDefinition-*.json"):
        sd = json.loads(path.read_text(encoding="utf-8"))
        if sd.get("kind") == "resource" and sd.get("derivation") == "specialization" and not sd.get("abstract"):
            types.add(sd["type"])
    out = ROOT / "fhir_server" / "model" / "r4_resource_types.json"
    out.write_text(json.dumps(sorted(types), indent=1) + "\n", encoding="utf-8")
    print(f"{len(types)} R4 resource types -> {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
