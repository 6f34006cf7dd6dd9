"""Typed configuration of the hub, read from the environment (prefix ``MEDUNION_``) and checked at start-up.

Every setting is documented in ``medunion.env.example`` at the root of the checkout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "SettingsError"]


class SettingsError(ValueError):
    """A setting that makes it unsafe or impossible to start."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDUNION_", extra="ignore", populate_by_name=True)

    env: Literal["development", "production"] = "development"
    home: Path = Field(default=Path(".data"), description="data folder: embedded store, keys, logs")

    http_host: str = "127.0.0.1"
    http_port: int = 8080
    workers: int = Field(default=1, ge=1, le=64, description="hub processes sharing the port (SO_REUSEPORT)")
    base_url: str | None = Field(default=None, description="public base of the FHIR API; default from host/port")

    # Document store. Unset: the hub starts its embedded FerretDB (SQLite backend) on loopback.
    mongodb_uri: str | None = Field(default=None, validation_alias=AliasChoices("MONGODB_URI", "MEDUNION_MONGODB_URI"))
    mongodb_database: str = "medunion"
    store_timeout_seconds: float = 5.0
    ferretdb_port: int = 27117
    ferretdb_bin: Path | None = None

    # Limits of the HTTP listener.
    max_body_bytes: int = 8 * 1024 * 1024
    history_max_count: int = 1000
    bundle_max_entries: int = 1000
    history_default_count: int = 50
    search_include_max: int = Field(default=1000, ge=1, description="resources _include/_revinclude add to a page")
    search_sort_max: int = Field(default=10_000, ge=1, description="matches a _sort search may order")
    search_sort_in_memory: int = Field(default=1000, ge=1, description="keys of a sorted search's most selective "
                                       "clause up to which its matches are sorted in memory, not walked in index order")
    search_order_budget: int = Field(default=2000, ge=1, description="resources that do not match the first page of a "
                                     "search walked in index order may read before the search is sorted in memory "
                                     "instead (unless it has more matches than search_sort_max)")
    search_sort_keep: float = Field(default=30.0, ge=0, description="seconds a large group of a sort by several "
                                    "keys is kept for the pages after its first (0: none kept)")
    search_chain_max: int = Field(default=1000, ge=1, description="matches of a chained or _has sub-search")
    search_total_max: int = Field(default=100_000, ge=1, description="matches _total=accurate may count")
    write_retry_seconds: float = 10.0
    instance_id: str = Field(default="hub", description="unique per hub process sharing one store")
    write_lease_seconds: float = 120.0  # longer than any request may run
    request_timeout_seconds: float = 60.0
    max_connections: int = 1000

    # Authorization (SMART App Launch v2 scopes on bearer JWTs).
    auth_issuer: str = "medunion-dev"
    auth_audience: str | None = Field(default=None, description="default: the FHIR base URL")
    jwks_file: Path | None = Field(default=None, description="public keys (JWKS) that sign accepted tokens")
    signing_key_file: Path | None = Field(default=None, description="private JWK used by `medunion token`")
    jwt_hs256_secret: str | None = Field(default=None, description="development only")
    token_leeway_seconds: int = 30

    timezone: str = "Asia/Shanghai"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        ZoneInfo(value)
        return value

    @model_validator(mode="after")
    def _safe_outside_development(self) -> Settings:
        if self.env == "production":
            if self.jwt_hs256_secret:
                raise SettingsError("MEDUNION_JWT_HS256_SECRET is refused in production: use RS256/ES256 via a JWKS")
            if self.jwks_file is None:
                raise SettingsError("production needs MEDUNION_JWKS_FILE (the public keys of your token issuer)")
            if self.mongodb_uri is None:
                raise SettingsError("production needs MONGODB_URI (the embedded store is for development)")
            if self.auth_issuer == "medunion-dev":
                raise SettingsError("production needs MEDUNION_AUTH_ISSUER set to your token issuer")
        return self

    @property
    def fhir_base(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        return f"http://{self.http_host}:{self.http_port}/fhir"

    @property
    def audience(self) -> str:
        return self.auth_audience or self.fhir_base

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"
