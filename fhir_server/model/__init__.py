"""FHIR R4 resource model: which types the hub serves, validation, representations."""

from __future__ import annotations

from fhir_server.model.types import R4_ONLY_TYPES, SUPPORTED_TYPES, require_supported_type
from fhir_server.model.validation import validate_resource

__all__ = ["R4_ONLY_TYPES", "SUPPORTED_TYPES", "require_supported_type", "validate_resource"]
