"""Membership of a resource in a patient's compartment (FHIR R4 compartmentdefinition-patient.html).

Used by authorization: a token with ``patient/`` scopes reaches only resources in its patient's
compartment. The per-type parameters come from the official CompartmentDefinition as data
(``data/patient_compartment.json``, derived by ``scripts/derive_compartments.py``). ``care_date`` says by which
date parameter ``$everything``'s ``start`` and ``end`` (care dates) choose a type's resources.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

from fhir_server.search.entries import entries_of
from fhir_server.search.registry import parameters_for

__all__ = ["care_date", "in_patient_compartment", "patient_compartment_params"]

_UTC = ZoneInfo("UTC")  # references carry no time; any zone will do
# R4's parameter of the date care was given on, shared by 17 types (``date`` of AllergyIntolerance, CarePlan, ...,
# Encounter, Observation, Procedure)
_CLINICAL_DATE = "http://hl7.org/fhir/SearchParameter/clinical-date"
# the types without it whose own date is when the care happened (an order's authoring, a dose given, a study
# started, a specimen collected): ``$everything``'s care dates choose them by it too. Types whose resources last
# (Condition, Goal, Coverage, Account, DocumentReference without a period of care, ...) have none.
_CARE_DATES = {
    "ServiceRequest": "authored", "DeviceRequest": "authored-on", "MedicationRequest": "authoredon",
    "MedicationAdministration": "effective-time", "MedicationDispense": "whenhandedover",
    "MedicationStatement": "effective", "NutritionOrder": "datetime", "VisionPrescription": "datewritten",
    "ImagingStudy": "started", "Specimen": "collected", "Media": "created", "Appointment": "date",
    "QuestionnaireResponse": "authored",
}


@cache
def _params() -> dict[str, list[str]]:
    text = resources.files("fhir_server.search").joinpath("data/patient_compartment.json").read_text("utf-8")
    loaded: dict[str, list[str]] = json.loads(text)["params"]
    return loaded


def patient_compartment_params(rtype: str) -> list[str]:
    return list(_params().get(rtype, []))


@cache
def care_date(rtype: str) -> str | None:
    """The date parameter by which ``$everything``'s ``start`` and ``end`` choose resources of ``rtype``
    (FHIR R4 patient-operation-everything: "care dates, not record currency dates"): R4's ``clinical-date``, or
    the type's own date of care (``_CARE_DATES``); None for a type whose resources are not dated by care (all of
    them are returned). Official parameters only are named so: asked once per type, not per request."""
    params = parameters_for(rtype)
    return next((code for code, p in params.items() if p.url == _CLINICAL_DATE), None) or _CARE_DATES.get(rtype)


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
