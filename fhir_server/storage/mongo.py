"""Connection to the document store through PyMongo's async API."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient

__all__ = ["connect"]


async def connect(uri: str, *, timeout_seconds: float = 5.0,
                  app_name: str = "medunion-hub") -> AsyncMongoClient[dict[str, Any]]:
    """Open a client and check the server answers (fail at start-up, not on the first request).

    ``timeout_seconds`` bounds how long an operation waits for an unreachable store before it fails.
    """
    ms = int(timeout_seconds * 1000)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri, appname=app_name, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, maxPoolSize=64, tz_aware=True,
    )
    await client.admin.command("ping")
    return client
