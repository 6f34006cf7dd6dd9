"""The FHIR REST entry point: routers, content negotiation, error translation, request limits."""

from __future__ import annotations

from fhir_server.api.routes import router, well_known

__all__ = ["router", "well_known"]
