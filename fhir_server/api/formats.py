"""Content negotiation (``Accept``, ``Content-Type``, ``_format``), request bodies and FHIR responses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import orjson
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.errors import BadRequest, Issue, NotAcceptable, PayloadTooLarge, UnsupportedMediaType
from fhir_server.model.representation import SummaryMode, from_xml, select_elements, summarize, to_xml

__all__ = ["Format", "Rendering", "fhir_response", "read_body", "read_resource", "rendering_of", "shape_resource"]

Format = Literal["json", "xml"]

JSON_TYPE = "application/fhir+json; charset=utf-8"
XML_TYPE = "application/fhir+xml; charset=utf-8"

# FHIR R4 http.html#mime-type: _format may be the MIME type or the short forms json / xml
_FORMAT_ALIASES: dict[str, Format] = {
    "json": "json", "application/json": "json", "application/fhir+json": "json", "application/json+fhir": "json",
    "xml": "xml", "text/xml": "xml", "application/xml": "xml", "application/fhir+xml": "xml",
    "application/xml+fhir": "xml",
}


class Rendering:
    """How the response body is shaped: format, ``_pretty``, ``_summary``, ``_elements``."""

    __slots__ = ("elements", "fmt", "pretty", "summary")

    def __init__(self, fmt: Format, pretty: bool, summary: SummaryMode, elements: list[str] | None) -> None:
        self.fmt = fmt
        self.pretty = pretty
        self.summary = summary
        self.elements = elements

    @property
    def plain(self) -> bool:
        return self.fmt == "json" and not self.pretty and self.summary == "false" and not self.elements


def _media(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def rendering_of(request: Request, params: list[tuple[str, str]] | None = None) -> Rendering:
    """The rendering asked for by the query, or by ``params`` (a ``POST _search`` form's and the query's: FHIR R4
    search.html, the result parameters may come in the body)."""
    q: Mapping[str, str] = request.query_params if params is None else dict(params)
    fmt_param = q.get("_format")
    fmt: Format
    if fmt_param is not None:
        found = _FORMAT_ALIASES.get(_media(fmt_param))
        if found is None:
            raise NotAcceptable(f"_format '{fmt_param}' is not supported: use json or xml")
        fmt = found
    else:
        accept = request.headers.get("accept")
        if not accept or accept.strip() in ("*/*", "application/*"):
            # no preference: answer in the format the client sent (FHIR R4 http.html#mime-type)
            sent = _FORMAT_ALIASES.get(_media(request.headers.get("content-type", "")))
            fmt = sent or "json"
        else:
            fmt = _from_accept(accept)
    summary = q.get("_summary", "false")
    if summary not in ("true", "false", "text", "data", "count"):
        raise BadRequest(f"_summary must be true, false, text, data or count, not '{summary}'", issues=[
            Issue(code="value", diagnostics="_summary must be true, false, text, data or count")])
    elements_param = q.get("_elements")
    elements = [e.strip() for e in elements_param.split(",") if e.strip()] if elements_param else None
    return Rendering(fmt, q.get("_pretty") == "true", summary, elements)  # type: ignore[arg-type]


def _from_accept(accept: str | None) -> Format:
    if not accept:
        return "json"
    best: tuple[float, Format] | None = None
    for part in accept.split(","):
        media, _, params = part.partition(";")
        media = media.strip().lower()
        quality = 1.0
        for p in params.split(";"):
            k, _, v = p.strip().partition("=")
            if k == "q":
                try:
                    quality = float(v)
                except ValueError:
                    quality = 0.0
        fmt: Format | None = _FORMAT_ALIASES.get(media)
        if fmt is None and media in ("*/*", "application/*"):
            fmt = "json"
        if fmt is not None and quality > 0 and (best is None or quality > best[0]):
            best = (quality, fmt)
    if best is None:
        raise NotAcceptable(f"None of the accepted types ({accept}) is served: use application/fhir+json or "
                            "application/fhir+xml")
    return best[1]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_resource(request: Request, limit: int, *, allow_patch: bool = False) -> tuple[Any, str]:
    """Parse the body as FHIR JSON or XML (or JSON Patch); returns (parsed, kind)."""
    body = await read_body(request, limit)
    media = _media(request.headers.get("content-type", "application/fhir+json"))
    if allow_patch and media == "application/json-patch+json":
        kind = "json-patch"
    elif media in ("application/fhir+json", "application/json", "application/json+fhir"):
        kind = "json"
    elif media in ("application/fhir+xml", "application/xml", "text/xml", "application/xml+fhir"):
        kind = "xml"
    else:
        accepted = "application/fhir+json, application/fhir+xml" + (
            ", application/json-patch+json" if allow_patch else "")
        raise UnsupportedMediaType(f"Content-Type '{media}' is not accepted here: use {accepted}")
    if not body.strip():
        raise BadRequest("The request body is empty")
    if kind == "xml":
        return from_xml(body), kind
    try:
        return orjson.loads(body), kind
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}", issues=[
            Issue(code="structure", diagnostics=f"The body is not valid JSON: {exc}")]) from exc


def shape_resource(resource: dict[str, Any], rendering: Rendering) -> dict[str, Any]:
    """Apply ``_summary`` and ``_elements`` to one resource."""
    if rendering.summary in ("true", "text", "data"):
        resource = summarize(resource, rendering.summary)
    if rendering.elements:
        resource = select_elements(resource, rendering.elements)
    return resource


def render(content: bytes | dict[str, Any], rendering: Rendering, *, shape: bool = True) -> bytes:
    """Serialize a resource (stored bytes or a dict) as the client asked."""
    if isinstance(content, bytes) and rendering.plain:
        return content
    resource = orjson.loads(content) if isinstance(content, bytes) else content
    if shape and resource.get("resourceType") not in ("Bundle", "OperationOutcome"):
        resource = shape_resource(resource, rendering)
    if rendering.fmt == "xml":
        return to_xml(resource, pretty=rendering.pretty)
    return orjson.dumps(resource, option=orjson.OPT_INDENT_2 if rendering.pretty else 0)


def fhir_response(content: bytes | dict[str, Any] | None, rendering: Rendering, *, status: int = 200,
                  headers: dict[str, str] | None = None, shape: bool = True) -> Response:
    media = XML_TYPE if rendering.fmt == "xml" else JSON_TYPE
    body = b"" if content is None else render(content, rendering, shape=shape)
    return Response(body, status_code=status, headers=headers, media_type=media if content is not None else None)
