"""Version ETags (FHIR R4 http.html#concurrency): ``W/"n"`` where n is ``meta.versionId``."""

from __future__ import annotations

__all__ = ["etag", "version_of_etag"]


def etag(vid: int) -> str:
    return f'W/"{vid}"'


def version_of_etag(value: str) -> int | None:
    """The version number of ``W/"n"`` (or ``"n"``), None if it is not a version ETag."""
    tag = value.strip().removeprefix("W/").strip('"')
    return int(tag) if tag.isdigit() else None
