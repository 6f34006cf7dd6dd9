"""Membership of a resource in a patient's compartment (FHIR R4 compartmentdefinition-patient.html).

Used by authorization: a token with ``patient/`` scopes reaches only resources in its patient's
compartment. The per-type parameters come from the official CompartmentDefinition as data
(``data/patient_compartment.json``, derived by ``scripts/derive_compartments.py``).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

from fhir_server.search.entries import entries_of

__all__ = ["in_patient_compartment", "patient_compartment_params"]

_UTC = ZoneInfo("UTC")  # references carry no time; any zone will do


@cache
def _params() -> dict[str, list[str]]:
    text = resources.files("fhir_server.search").joinpath("data/patient_compartment.json").read_text("utf-8")
    loaded: dict[str, list[str]] = json.loads(text)["params"]
    return loaded


def patient_compartment_params(rtype: str) -> list[str]:
    return list(_params().get(rtype, []))


def in_patient_compartment(resource: dict[str, Any], patient_id: str) -> bool:
    """True if ``resource`` is the patient itself or refers to it through a compartment parameter."""
    rtype = resource.get("resourceType", "")
    if rtype == "Patient" and resource.get("id") == patient_id:
        return True
    target = f"Patient/{patient_id}"
    for code in patient_compartment_params(rtype):
        for ref in entries_of(resource, code, zone=_UTC):
            if ref == target or (isinstance(ref, str) and ref.endswith("/" + target)):
                return True
    return False
