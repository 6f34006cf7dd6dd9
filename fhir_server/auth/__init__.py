"""Authorization: bearer JWTs and SMART App Launch v2 scopes."""

from __future__ import annotations

from fhir_server.auth.scopes import Grant, Principal, parse_scopes
from fhir_server.auth.tokens import TokenVerifier, ensure_dev_keys, mint_token

__all__ = ["Grant", "Principal", "TokenVerifier", "ensure_dev_keys", "mint_token", "parse_scopes"]
