"""``GET /metadata`` (CapabilityStatement) and ``/.well-known/smart-configuration``: exactly what is implemented."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fhir_server import __version__
from fhir_server.model.types import SUPPORTED_TYPES
from fhir_server.search.query import MODIFIERS, NEAR_DEFAULT_KM
from fhir_server.search.registry import generation, parameters_for
from fhir_server.settings import Settings

__all__ = ["capability_statement", "smart_configuration"]

_TYPE_INTERACTIONS = ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                      "search-type"]
_PREFIXED = ("date", "number", "quantity")


def _search_params(rtype: str) -> list[dict[str, Any]]:
    """Every parameter of the registry the hub searches by, with its modifiers (composite and special: not)."""
    out = []
    for code, parameter in sorted(parameters_for(rtype).items()):
        if parameter.type == "special" and code == "near":
            out.append({"name": code, "definition": parameter.url, "type": "special", "documentation":
                        f"latitude|longitude|distance|units (km, m, [mi_i]; {NEAR_DEFAULT_KM:g} km when no distance); "
                        "not indexed"})
            continue
        if parameter.type not in MODIFIERS:
            continue
        notes = [f"modifiers: {', '.join(':' + m for m in MODIFIERS[parameter.type])}"] if MODIFIERS[parameter.type] \
            else ["components joined by $, all holding in one element"]
        if parameter.type in _PREFIXED:
            notes.append("prefixes: eq ne gt lt ge le sa eb ap")
        if parameter.type == "reference":
            notes.append("chaining (param.child=value, param:Type.child=value)")
        out.append({"name": code, "definition": parameter.url, "type": parameter.type,
                    "documentation": "; ".join(notes)})
    return out


def _reverse_includes(rtype: str) -> list[str]:
    return sorted(f"{source}:{code}" for source in SUPPORTED_TYPES for code, p in parameters_for(source).items()
                  if p.type == "reference" and rtype in p.targets)


@lru_cache(maxsize=2)
def _resources(registry_generation: int) -> list[dict[str, Any]]:
    """The per-type part of the statement: built once per state of the search registry (custom parameters)."""
    return [
        {
            "type": rtype,
            "interaction": [{"code": code} for code in _TYPE_INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "not-supported",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "logical"],
            "searchInclude": ["*", *sorted(f"{rtype}:{code}" for code, p in parameters_for(rtype).items()
                                           if p.type == "reference")],
            "searchRevInclude": _reverse_includes(rtype),
            "searchParam": [*_search_params(rtype),
                            {"name": "_has", "type": "special", "documentation": "reverse chaining, nested"},
                            {"name": "_text", "type": "string", "documentation": "words (substrings, any "
                             "case and accents) in the narrative as read, without its markup"},
                            {"name": "_content", "type": "string", "documentation": "words (substrings, any "
                             "case and accents) in any string of the resource or its narrative as read"}],
            "operation": [{"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"},
                          *([{"name": "everything",
                              "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}]
                            if rtype == "Patient" else [])],
        }
        for rtype in sorted(SUPPORTED_TYPES)
    ]


def capability_statement(settings: Settings, *, software_date: str) -> dict[str, Any]:
    resources = _resources(generation())
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": software_date,
        "publisher": "MedUnion Hub",
        "kind": "instance",
        "software": {"name": "MedUnion Hub", "version": __version__},
        "implementation": {"description": "MedUnion Hub FHIR R4 server", "url": settings.fhir_base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/fhir+xml"],
        "patchFormat": ["application/json-patch+json", "application/fhir+json", "application/fhir+xml"],
        "rest": [{
            "mode": "server",
            "documentation": "Search (GET, POST _search, system level with _type, Patient compartments) and "
                             "conditional create/update/delete accept every parameter listed per type; results "
                             "are paged with a stable _cursor link. Unknown parameters are ignored and reported "
                             "in an OperationOutcome entry; Prefer: handling=strict makes them a 400.",
            "security": {
                "cors": False,
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                         "code": "SMART-on-FHIR"}]}],
                "description": "Bearer JWT (RS256/ES256) with SMART App Launch v2 scopes, on every endpoint "
                               "except /metadata and /.well-known/smart-configuration",
            },
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"},
                            {"code": "search-system"}],
            "searchParam": [{"name": "_type", "type": "token", "documentation": "types to search"}],
            "compartment": ["http://hl7.org/fhir/CompartmentDefinition/patient"],
        }],
    }


def smart_configuration(settings: Settings) -> dict[str, Any]:
    return {
        "issuer": settings.auth_issuer,
        "grant_types_supported": [],
        "token_endpoint_auth_methods_supported": [],
        "scopes_supported": ["system/*.cruds", "user/*.cruds", "patient/Patient.rs", "system/*.read",
                             "system/*.write", "user/*.read", "user/*.write"],
        "capabilities": ["permission-v2", "permission-v1"],
        "code_challenge_methods_supported": [],
    }
