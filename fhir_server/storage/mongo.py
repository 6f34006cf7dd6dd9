"""Connection to the document store through PyMongo's async API."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient

__all__ = ["connect"]


async def connect(uri: str, *, app_name: str = "medunion-hub") -> AsyncMongoClient[dict[str, Any]]:
    """Open a client and check the server answers (fail at start-up, not on the first request)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri, appname=app_name, serverSelectionTimeoutMS=10_000, connectTimeoutMS=5_000, maxPoolSize=64,
        tz_aware=True,
    )
    await client.admin.command("ping")
    return client
