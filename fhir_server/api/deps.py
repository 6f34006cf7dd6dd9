"""What a handler needs from the app's lifespan state: settings, the service, and the calling Principal.

Plain functions called at the top of each handler rather than FastAPI dependencies: the hub serves its
routes with Starlette directly (FastAPI's per-request machinery cost 30 % of read throughput, measured in
docs/benchmarks.md), and these keep the same typed, lifespan-built shape.
"""

from __future__ import annotations

import time

from starlette.requests import Request

from fhir_server.auth.scopes import Principal
from fhir_server.auth.tokens import TokenVerifier
from fhir_server.errors import Unauthorized
from fhir_server.service import BundleService, ResourceService
from fhir_server.service.reindex import Reindexer
from fhir_server.settings import Settings

__all__ = ["TokenCache", "bundles_of", "current_user", "reindexer_of", "service_of", "settings_of"]


class TokenCache:
    """Verified tokens until they expire, so a client's steady stream of requests costs one verification."""

    def __init__(self, verifier: TokenVerifier, *, capacity: int = 10_000) -> None:
        self.verifier = verifier
        self.capacity = capacity
        self._cache: dict[str, tuple[Principal, float]] = {}

    def principal(self, token: str) -> Principal:
        hit = self._cache.get(token)
        now = time.time()
        if hit is not None and hit[1] > now:
            return hit[0]
        principal = self.verifier.verify(token)
        exp = principal.claims.get("exp")
        if isinstance(exp, int | float):
            if len(self._cache) >= self.capacity:
                self._cache.clear()
            self._cache[token] = (principal, float(exp))
        return principal


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def service_of(request: Request) -> ResourceService:
    service: ResourceService = request.app.state.service
    return service


def reindexer_of(request: Request) -> Reindexer:
    reindexer: Reindexer = request.app.state.reindexer
    return reindexer


def bundles_of(request: Request) -> BundleService:
    bundles: BundleService = request.app.state.bundles
    return bundles


async def current_user(request: Request) -> Principal:
    """The Principal of the request's bearer token; 401 (with WWW-Authenticate) if there is none or it fails."""
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("This endpoint needs a bearer token (Authorization: Bearer ...)",
                           headers={"WWW-Authenticate": 'Bearer realm="medunion"'})
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("The Authorization header must be 'Bearer <token>'",
                           headers={"WWW-Authenticate": 'Bearer realm="medunion"'})
    cache: TokenCache = request.app.state.tokens
    try:
        return cache.principal(token.strip())
    except Unauthorized as exc:
        exc.headers.setdefault("WWW-Authenticate", 'Bearer realm="medunion", error="invalid_token"')
        raise
