"""The FHIR REST entry point: routes, content negotiation, error translation, request limits."""

from __future__ import annotations

from fhir_server.api.routes import fhir_routes, root_routes

__all__ = ["fhir_routes", "root_routes"]
