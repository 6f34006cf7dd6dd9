"""Bearer JWT verification (RS256/ES256 from a JWKS; HS256 only in development) and development minting.

Development keys: on first start the hub makes an ES256 key pair under ``$MEDUNION_HOME/keys``;
``medunion token`` signs with it, so the hub started with the same ``MEDUNION_HOME`` accepts its tokens.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from fhir_server.auth.scopes import Principal, parse_scopes
from fhir_server.errors import Unauthorized
from fhir_server.settings import Settings, SettingsError

__all__ = ["TokenVerifier", "ensure_dev_keys", "mint_token"]

_ASYMMETRIC = ["RS256", "ES256"]


def _dev_paths(settings: Settings) -> tuple[Path, Path]:
    return settings.keys_dir / "signing-key.jwk.json", settings.keys_dir / "jwks.json"


def ensure_dev_keys(settings: Settings) -> None:
    """Create the development ES256 key pair once (private key readable by the owner only)."""
    if settings.jwks_file is not None:
        return
    private_path, jwks_path = _dev_paths(settings)
    if private_path.exists() and jwks_path.exists():
        return
    settings.keys_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    kid = uuid.uuid4().hex[:16]
    private_jwk = json.loads(ECAlgorithm.to_jwk(key)) | {"kid": kid, "alg": "ES256", "use": "sig"}
    public_jwk = json.loads(ECAlgorithm.to_jwk(key.public_key())) | {"kid": kid, "alg": "ES256", "use": "sig"}
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(private_jwk, fh)
    jwks_path.write_text(json.dumps({"keys": [public_jwk]}), encoding="utf-8")


def mint_token(settings: Settings, *, subject: str, scope: str, patient: str | None = None,
               lifetime_seconds: int = 3600, audience: str | None = None) -> str:
    """A signed token the hub accepts: with ``signing_key_file`` (or the development key)."""
    now = int(time.time())
    claims: dict[str, Any] = {"iss": settings.auth_issuer, "aud": audience or settings.audience, "sub": subject,
                              "scope": scope, "iat": now, "exp": now + lifetime_seconds, "jti": uuid.uuid4().hex}
    if patient:
        claims["patient"] = patient
    key_path = settings.signing_key_file
    if key_path is None:
        if settings.env != "development":
            raise SettingsError("`medunion token` outside development needs MEDUNION_SIGNING_KEY_FILE")
        if settings.jwt_hs256_secret:
            return jwt.encode(claims, settings.jwt_hs256_secret, algorithm="HS256")
        ensure_dev_keys(settings)
        key_path = _dev_paths(settings)[0]
    jwk = json.loads(key_path.read_text(encoding="utf-8"))
    signing_key = jwt.PyJWK.from_dict(jwk)
    return jwt.encode(claims, signing_key.key, algorithm=jwk.get("alg", "ES256"), headers={"kid": jwk.get("kid")})


class TokenVerifier:
    """Checks signature, ``iss``, ``aud`` and ``exp`` and turns the claims into a Principal."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hs256_secret = settings.jwt_hs256_secret if settings.env == "development" else None
        jwks_path = settings.jwks_file
        if jwks_path is None:
            ensure_dev_keys(settings)
            jwks_path = _dev_paths(settings)[1]
        data = json.loads(Path(jwks_path).read_text(encoding="utf-8"))
        self.keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(data).keys}

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized("The bearer token is not a JWT") from exc
        alg = header.get("alg")
        if alg == "HS256" and self.hs256_secret:
            key: Any = self.hs256_secret
        elif alg in _ASYMMETRIC:
            kid = header.get("kid")
            found = self.keys.get(kid) if kid is not None else (next(iter(self.keys.values())) if len(self.keys) == 1
                                                                 else None)
            if found is None:
                raise Unauthorized("The bearer token is signed with a key this hub does not know (kid)")
            key = found.key
        else:
            raise Unauthorized(f"Token algorithm {alg!r} is not accepted (RS256 or ES256)")
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=self.settings.audience,
                                issuer=self.settings.auth_issuer, leeway=self.settings.token_leeway_seconds,
                                options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("The bearer token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthorized(
                f"The bearer token is not for this server (aud must be {self.settings.audience})") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthorized("The bearer token comes from an issuer this hub does not trust") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"The bearer token lacks the claim {exc.claim!r}") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"The bearer token is invalid ({type(exc).__name__})") from exc
        scope = claims.get("scope") or " ".join(claims.get("scp") or [])
        return Principal(subject=str(claims["sub"]), grants=parse_scopes(str(scope)),
                         patient=claims.get("patient"), claims=claims)
