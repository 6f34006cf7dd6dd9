"""MedUnion Hub: FHIR R4 REST API, service layer, storage, authorization and CLI."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
