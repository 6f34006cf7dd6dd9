"""FastAPI dependencies, built from the app's lifespan state.

They are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in a thread pool, which cost a
thread hop per dependency per request (10 % of a read's CPU when they were sync).
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request

from fhir_server.auth.scopes import Principal
from fhir_server.auth.tokens import TokenVerifier
from fhir_server.errors import Unauthorized
from fhir_server.service import ResourceService
from fhir_server.settings import Settings

__all__ = ["CurrentUser", "ServiceDep", "SettingsDep", "TokenCache"]


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


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _service(request: Request) -> ResourceService:
    service: ResourceService = request.app.state.service
    return service


async def _principal(request: Request) -> Principal:
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


SettingsDep = Annotated[Settings, Depends(_settings)]
ServiceDep = Annotated[ResourceService, Depends(_service)]
CurrentUser = Annotated[Principal, Depends(_principal)]
