"""The resource types the hub serves: every R4 (4.0.1) type that the R4B models of fhir.resources share."""

from __future__ import annotations

import importlib
import json
import re
from functools import cache
from importlib import resources
from typing import Any

from fhir_server.errors import NotFound

__all__ = ["ID_RE", "R4_ONLY_TYPES", "SUPPORTED_TYPES", "model_class", "require_supported_type"]

# FHIR R4 datatypes.html#id: [A-Za-z0-9\-\.]{1,64}
ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def _r4_types() -> list[str]:
    text = resources.files("fhir_server.model").joinpath("r4_resource_types.json").read_text("utf-8")
    return list(json.loads(text))


def _has_r4b_model(name: str) -> bool:
    try:
        importlib.import_module(f"fhir.resources.R4B.{name.lower()}")
    except ModuleNotFoundError:
        return False
    return True


_ALL_R4 = _r4_types()
SUPPORTED_TYPES: frozenset[str] = frozenset(t for t in _ALL_R4 if _has_r4b_model(t))
R4_ONLY_TYPES: frozenset[str] = frozenset(_ALL_R4) - SUPPORTED_TYPES


def require_supported_type(name: str) -> str:
    """Return ``name`` if the hub serves it, else raise a 404 that says why."""
    if name in SUPPORTED_TYPES:
        return name
    if name in R4_ONLY_TYPES:
        raise NotFound(
            f"Resource type '{name}' exists in FHIR R4 but not in the R4B models this hub validates with;"
            " it is not supported here"
        )
    raise NotFound(f"Unknown resource type '{name}'")


@cache
def model_class(name: str) -> Any:
    """The fhir.resources R4B model class of a supported type."""
    module = importlib.import_module(f"fhir.resources.R4B.{name.lower()}")
    return getattr(module, name)
