"""Version ETags (FHIR R4 http.html#concurrency): ``W/"n"`` where n is ``meta.versionId``."""

from __future__ import annotations

from fhir_server.storage import Version

__all__ = ["etag", "not_modified", "version_of_etag"]


def etag(vid: int) -> str:
    return f'W/"{vid}"'


def version_of_etag(value: str) -> int | None:
    """The version number of ``W/"n"`` (or ``"n"``), None if it is not a version ETag."""
    tag = value.strip().removeprefix("W/").strip('"')
    return int(tag) if tag.isdigit() else None


def not_modified(version: Version, *, if_none_match: str | None, modified_by: int | None) -> bool:
    """Conditional read (FHIR R4 http.html#cread): the client's copy is current when ``if_none_match`` names the
    version's ETag (or is ``*``), or else when the version was last changed at or before ``modified_by``
    (microseconds, the last instant of the client's If-Modified-Since at its precision)."""
    if if_none_match is not None:
        tags = [t.strip() for t in if_none_match.split(",")]
        return "*" in tags or version.vid in {version_of_etag(t) for t in tags}
    return modified_by is not None and version.ts <= modified_by
