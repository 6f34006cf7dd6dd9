"""``GET /metadata`` (CapabilityStatement) and ``/.well-known/smart-configuration``: exactly what is implemented."""

from __future__ import annotations

from functools import cache
from typing import Any

from fhir_server import __version__
from fhir_server.model.types import SUPPORTED_TYPES
from fhir_server.search.registry import parameters_for
from fhir_server.settings import Settings

__all__ = ["capability_statement", "smart_configuration"]

_TYPE_INTERACTIONS = ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                      "search-type"]
# the parameters the hub searches by so far (search/criteria.py); the search issue adds the rest
_SEARCH_PARAMS = [
    {"name": "_id", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id", "type": "token"},
    {"name": "identifier", "type": "token",
     "documentation": "system|value, |value or value; exact match"},
]


@cache
def _resources() -> list[dict[str, Any]]:
    """The per-type part of the statement: the same for the life of the process, so built once."""
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
            "searchParam": _SEARCH_PARAMS if "identifier" in parameters_for(rtype) else _SEARCH_PARAMS[:1],
            "operation": [{"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}],
        }
        for rtype in sorted(SUPPORTED_TYPES)
    ]


def capability_statement(settings: Settings, *, software_date: str) -> dict[str, Any]:
    resources = _resources()
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
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "documentation": "Search and conditional create/update/delete accept the parameters _id and "
                             "identifier (where the type has one); results are paged with a _cursor link.",
            "security": {
                "cors": False,
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                         "code": "SMART-on-FHIR"}]}],
                "description": "Bearer JWT (RS256/ES256) with SMART App Launch v2 scopes, on every endpoint "
                               "except /metadata and /.well-known/smart-configuration",
            },
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
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
