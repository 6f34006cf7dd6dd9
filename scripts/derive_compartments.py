"""Derives fhir_server/search/data/patient_compartment.json from the official Patient CompartmentDefinition.

Source: CompartmentDefinition-patient.json of hl7.fhir.r4.examples@4.0.1 (CC0): for each resource type,
the search parameters whose references make a resource part of a patient's compartment.

Run: scripts/fetch-fhir-examples.sh && .venv/bin/python scripts/derive_compartments.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fhir_server.model.types import SUPPORTED_TYPES  # noqa: E402

SOURCE = ROOT / ".cache" / "fhir-r4-examples" / "package" / "CompartmentDefinition-patient.json"
OUT = ROOT / "fhir_server" / "search" / "data" / "patient_compartment.json"


def main() -> None:
    definition = json.loads(SOURCE.read_text(encoding="utf-8"))
    members = {r["code"]: r["param"] for r in definition["resource"] if r.get("param") and r["code"] in SUPPORTED_TYPES}
    OUT.write_text(json.dumps({"source": "hl7.fhir.r4.examples@4.0.1 CompartmentDefinition-patient.json (CC0)",
                               "params": dict(sorted(members.items()))}, indent=1) + "\n", encoding="utf-8")
    print(f"{len(members)} types in the Patient compartment -> {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
