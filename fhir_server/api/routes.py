"""FHIR R4 RESTful API (http.html): thin handlers that decode, call the service and encode."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from fhir_server.api.capability import capability_statement, smart_configuration
from fhir_server.api.deps import bundles_of, current_user, reindexer_of, service_of, settings_of
from fhir_server.api.formats import Rendering, fhir_response, read_resource, rendering_of, shape_resource
from fhir_server.errors import BadRequest, Issue, MethodNotAllowed, NotFound, UnsupportedMediaType, operation_outcome
from fhir_server.model.types import require_supported_type
from fhir_server.search import SearchPage, refuse_ignored, types_named
from fhir_server.search.entries import date_range
from fhir_server.service import HistoryResult, ResourceService, WriteResult, instant
from fhir_server.service.etag import etag, not_modified, version_of_etag
from fhir_server.service.searchset import page_size, searchset
from fhir_server.settings import Settings
from fhir_server.storage import Version

__all__ = ["fhir_routes", "root_routes"]

_STARTED = datetime.now(UTC).isoformat(timespec="seconds")


# ---- header helpers ---------------------------------------------------------------------------------------

def _http_date(ts: int) -> str:
    return format_datetime(datetime.fromtimestamp(ts / 1_000_000, UTC), usegmt=True)


def _version_headers(version: Version, settings: Settings, *, location: bool = False) -> dict[str, str]:
    headers = {"ETag": etag(version.vid), "Last-Modified": _http_date(version.ts)}
    if location:
        headers["Location"] = f"{settings.fhir_base}/{version.key}/_history/{version.vid}"
    return headers


def _if_match(request: Request) -> int | None:
    """``If-Match: W/"n"`` (FHIR R4 http.html#concurrency) as the version number n."""
    value = request.headers.get("if-match")
    if value is None:
        return None
    vid = version_of_etag(value)
    if vid is None:
        raise BadRequest(f"If-Match must be a version ETag like W/\"3\", not {value!r}")
    return vid


def _if_none_exist(request: Request) -> str | None:
    """``If-None-Exist``: the criteria of a conditional create (a query string). Header values reach the hub as
    bytes read as Latin-1; criteria with Chinese text come percent-encoded (ASCII) or as raw UTF-8 (``curl -H``),
    which is read as such rather than as Latin-1 (that searched for other text and created a duplicate)."""
    value = request.headers.get("if-none-exist")
    if value is None or value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise BadRequest("If-None-Exist is not UTF-8; send its non-ASCII values percent-encoded "
                         "(identifier=urn:mrn%7C%E7%8E%8B...)") from None


def _not_modified(request: Request, version: Version) -> bool:
    """If-None-Match, or else If-Modified-Since (an HTTP date: a whole second; without a zone, UTC)."""
    modified_by = None
    try:
        since = parsedate_to_datetime(request.headers.get("if-modified-since", ""))
        modified_by = int(since.replace(tzinfo=since.tzinfo or UTC).timestamp()) * 1_000_000 + 999_999
    except (TypeError, ValueError):  # absent or not a date: no condition
        pass
    return not_modified(version, if_none_match=request.headers.get("if-none-match"), modified_by=modified_by)


def _prefer_return(request: Request) -> str:
    for part in request.headers.get("prefer", "").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip() == "return":
            return value.strip().strip('"')
    return "representation"


def _criteria(request: Request, what: str) -> str:
    """The search criteria of a conditional ``what`` (update, patch, delete) on a type: its query, which it needs."""
    if not request.url.query:
        raise MethodNotAllowed(f"{request.method} on a type needs search criteria (conditional {what}), "
                               "e.g. ?identifier=s|v")
    return request.url.query


def _write_response(request: Request, result: WriteResult, settings: Settings, rendering: Rendering) -> Response:
    version = result.version
    status = 201 if result.created and result.changed else 200
    headers = _version_headers(version, settings, location=True)
    prefer = _prefer_return(request)
    if prefer == "minimal":
        return Response(status_code=status, headers=headers)
    if prefer == "OperationOutcome":
        what = "created" if status == 201 else ("updated" if result.changed else "matched; nothing was created")
        outcome = operation_outcome([Issue(code="informational", severity="information",
                                           diagnostics=f"{version.key} version {version.vid} {what}")])
        return fhir_response(outcome, rendering, status=status, headers=headers, shape=False)
    return fhir_response(version.body, rendering, status=status, headers=headers)


# ---- capabilities -------------------------------------------------------------------------------------------

async def metadata(request: Request) -> Response:
    settings = settings_of(request)
    rendering = rendering_of(request)
    statement = capability_statement(settings, software_date=_STARTED)
    return fhir_response(statement, Rendering(rendering.fmt, rendering.pretty, "false", None), shape=False)


async def smart_config(request: Request) -> Response:
    return Response(orjson.dumps(smart_configuration(settings_of(request))), media_type="application/json")


# ---- history ------------------------------------------------------------------------------------------------

def _parse_instant(name: str, value: str | None, settings: Settings, *, end: bool = False) -> int | None:
    """A FHIR date/dateTime/instant parameter as store microseconds; no zone means the hub's zone.

    ``end``: a date without a time stands for its whole period, so take the period's last microsecond.
    """
    if value is None:
        return None
    text = value.strip()
    bounds = date_range(text, settings.zone)
    if bounds is None:
        raise BadRequest(f"{name} must be a FHIR instant like 2026-01-31T08:00:00+08:00", issues=[
            Issue(code="value", diagnostics=f"{name} must be a FHIR instant like 2026-01-31T08:00:00+08:00",
                  expression=(name,))])
    return bounds[1] if end and len(text) <= 10 else bounds[0]


async def _history(request: Request, service: ResourceService, settings: Settings, user: Any,
                   rtype: str | None, rid: str | None) -> Response:
    rendering = rendering_of(request)
    q = request.query_params
    count = page_size(q.get("_count"), settings)
    result = await service.history(
        principal=user, rtype=rtype, rid=rid, since=_parse_instant("_since", q.get("_since"), settings),
        at=_parse_instant("_at", q.get("_at"), settings, end=True), count=count, cursor=q.get("_cursor"))
    path = "/".join(p for p in (rtype, rid, "_history") if p)
    bundle = _history_bundle(result, settings, f"{settings.fhir_base}/{path}", q, count)
    return fhir_response(bundle, rendering, shape=False)


def _history_bundle(result: HistoryResult, settings: Settings, url: str, q: Any, count: int) -> dict[str, Any]:
    keep = {k: v for k, v in q.items() if k in ("_since", "_at", "_format", "_pretty")}
    self_params = {**keep, "_count": count}
    if "_cursor" in q:
        self_params["_cursor"] = q["_cursor"]
    links = [{"relation": "self", "url": f"{url}?{urlencode(self_params)}"}]
    if result.next_cursor is not None:
        next_params = {**keep, "_count": count, "_cursor": result.next_cursor}
        links.append({"relation": "next", "url": f"{url}?{urlencode(next_params)}"})
    entries = []
    for v in result.versions:
        full_url = f"{settings.fhir_base}/{v.key}"
        status = "201 Created" if v.vid == 1 else ("204 No Content" if v.deleted else "200 OK")
        entry: dict[str, Any] = {"fullUrl": full_url}
        if v.body is not None:
            entry["resource"] = orjson.loads(v.body)
        method = "PUT" if v.method == "PATCH" else v.method  # Bundle.entry.request.method has no PATCH in R4
        entry["request"] = {"method": method, "url": v.rtype if method == "POST" else v.key}
        entry["response"] = {"status": status, "etag": etag(v.vid), "lastModified": instant(v.ts, settings)}
        entries.append(entry)
    return {"resourceType": "Bundle", "type": "history", "link": links, "entry": entries}


async def history_system(request: Request) -> Response:
    user = await current_user(request)
    return await _history(request, service_of(request), settings_of(request), user, None, None)


async def history_type(request: Request) -> Response:
    rtype = require_supported_type(request.path_params["rtype"])
    user = await current_user(request)
    return await _history(request, service_of(request), settings_of(request), user, rtype, None)


async def read(request: Request) -> Response:
    rendering = rendering_of(request)
    user = await current_user(request)
    settings = settings_of(request)
    version = await service_of(request).read(principal=user, rtype=request.path_params["rtype"],
                                             rid=request.path_params["rid"])
    return _version_response(request, version, rendering, settings)


async def history_instance(request: Request) -> Response:
    rtype = require_supported_type(request.path_params["rtype"])
    user = await current_user(request)
    return await _history(request, service_of(request), settings_of(request), user, rtype,
                          request.path_params["rid"])


async def vread(request: Request) -> Response:
    rendering = rendering_of(request)
    user = await current_user(request)
    settings = settings_of(request)
    params = request.path_params
    version = await service_of(request).vread(principal=user, rtype=params["rtype"], rid=params["rid"],
                                              vid=params["vid"])
    return _version_response(request, version, rendering, settings)


def _version_response(request: Request, version: Version, rendering: Rendering, settings: Settings) -> Response:
    """A read or vread answer: 304 when the client's copy is current (If-None-Match, If-Modified-Since)."""
    headers = _version_headers(version, settings)
    if _not_modified(request, version):
        return Response(status_code=304, headers=headers)
    return fhir_response(version.body, rendering, headers=headers)


# ---- batch and transaction --------------------------------------------------------------------------------

async def batch_or_transaction(request: Request) -> Response:
    rendering = rendering_of(request)
    user = await current_user(request)
    settings = settings_of(request)
    bundle, _ = await read_resource(request, settings.max_body_bytes)
    response = await bundles_of(request).process(principal=user, bundle=bundle)
    return fhir_response(response, rendering, shape=False)


# ---- validate -----------------------------------------------------------------------------------------------

async def _validate(request: Request, service: ResourceService, settings: Settings, user: Any, rtype: str,
                    rid: str | None) -> Response:
    rendering = rendering_of(request)
    require_supported_type(rtype)
    resource, _ = await read_resource(request, settings.max_body_bytes)
    # FHIR R4 resource-operation-validate: the body may be a Parameters with a "resource" parameter
    if isinstance(resource, dict) and resource.get("resourceType") == "Parameters" and rtype != "Parameters":
        found = [p.get("resource") for p in resource.get("parameter", []) if p.get("name") == "resource"]
        resource = found[0] if found else None
    await service.validate(principal=user, rtype=rtype, resource=resource, rid=rid)
    outcome = operation_outcome([Issue(code="informational", severity="information",
                                       diagnostics="The resource is valid")])
    return fhir_response(outcome, rendering, shape=False)


async def validate_type(request: Request) -> Response:
    user = await current_user(request)
    return await _validate(request, service_of(request), settings_of(request), user,
                           request.path_params["rtype"], None)


async def validate_instance(request: Request) -> Response:
    user = await current_user(request)
    return await _validate(request, service_of(request), settings_of(request), user,
                           request.path_params["rtype"], request.path_params["rid"])


# ---- type level: create, conditional update, conditional delete --------------------------------------------

async def create(request: Request) -> Response:
    rendering = rendering_of(request)
    user = await current_user(request)
    service, settings = service_of(request), settings_of(request)
    rtype = require_supported_type(request.path_params["rtype"])
    resource, _ = await read_resource(request, settings.max_body_bytes)
    result = await service.create(principal=user, rtype=rtype, resource=resource,
                                  if_none_exist=_if_none_exist(request))
    return _write_response(request, result, settings, rendering)


def _strict(request: Request) -> bool:
    """``Prefer: handling=strict``: unknown search parameters are an error (FHIR R4 search.html#errors)."""
    prefer = request.headers.get("prefer", "")
    return any(p.strip().replace(" ", "") == "handling=strict" for p in prefer.split(";") + prefer.split(","))


def _searchset(request: Request, path: str, params: list[tuple[str, str]], page: SearchPage,
               ignored: list[str], *, summary_count: bool = False) -> Response:
    settings = settings_of(request)
    rendering = rendering_of(request, params)
    # plain JSON: each stored resource goes into the Bundle as its stored bytes, neither parsed nor re-serialised
    resource_of: Callable[[Version], Any] = (
        (lambda v: orjson.Fragment(v.body or b"{}")) if rendering.plain
        else (lambda v: shape_resource(orjson.loads(v.body or b"{}"), rendering)))
    bundle = searchset(page, url=f"{settings.fhir_base}/{path}".rstrip("/"), base=settings.fhir_base, params=params,
                       ignored=ignored, summary_count=summary_count, resource_of=resource_of)
    return fhir_response(bundle, rendering, shape=False)


async def _search_pairs(request: Request) -> list[tuple[str, str]]:
    """The search parameters of a GET (query) or a ``POST _search`` (form body and query, FHIR R4 search.html)."""
    pairs = list(request.query_params.multi_items())
    if request.method == "POST":
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            raise UnsupportedMediaType("POST _search takes application/x-www-form-urlencoded parameters")
        body = await request.body()
        if len(body) > settings_of(request).max_body_bytes:
            raise BadRequest("The search form is too large")
        pairs += parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return pairs


async def search_type(request: Request) -> Response:
    """``GET [type]?…`` and ``POST [type]/_search``: a searchset Bundle, paged by a stable cursor; and
    ``GET Patient/[id]/[type]?…``, the same within one patient's compartment."""
    user = await current_user(request)
    settings = settings_of(request)
    rtype = require_supported_type(request.path_params["rtype"])
    compartment, path = None, rtype
    if "ctype" in request.path_params:
        compartment = (require_supported_type(request.path_params["ctype"]), request.path_params["cid"])
        path = f"{compartment[0]}/{compartment[1]}/{rtype}"
    pairs = await _search_pairs(request)
    q = dict(pairs)
    query, page = await service_of(request).search(
        principal=user, rtype=rtype, pairs=pairs, count=page_size(q.get("_count"), settings), cursor=q.get("_cursor"),
        strict=_strict(request), compartment=compartment)
    return _searchset(request, path, pairs, page, query.ignored, summary_count=query.summary_count)


async def search_system(request: Request) -> Response:
    """``GET [base]?_type=A,B&…`` and ``POST [base]/_search``: one search over several types (all types without
    ``_type``); and ``GET Patient/[id]/*`` and ``POST Patient/[id]/_search``: over the types of that patient's
    compartment."""
    user = await current_user(request)
    settings = settings_of(request)
    pairs = await _search_pairs(request)
    q = dict(pairs)
    compartment, path = None, ""
    if "ctype" in request.path_params:
        compartment = (require_supported_type(request.path_params["ctype"]), request.path_params["cid"])
        path = f"{compartment[0]}/{compartment[1]}/*"
    ignored, page = await service_of(request).search_many(
        principal=user, types=types_named(pairs) or None, pairs=pairs, count=page_size(q.get("_count"), settings),
        cursor=q.get("_cursor"), strict=_strict(request), compartment=compartment)
    return _searchset(request, path, pairs, page, ignored, summary_count=("_summary", "count") in pairs)


# what ``$everything`` takes: its own parameters (R4 patient-operation-everything) and the result parameters of any
# search
_EVERYTHING_PARAMETERS = frozenset({"start", "end", "_since", "_type", "_count", "_cursor", "_format", "_pretty",
                                    "_elements", "_summary"})


def _care_dates(q: Any, settings: Settings) -> tuple[str | None, str | None]:
    """``$everything``'s ``start`` and ``end``: FHIR dates (or dateTimes), ``end`` not before ``start``."""
    found: dict[str, tuple[str, tuple[int, int]]] = {}
    for name in ("start", "end"):
        if name not in q:
            continue
        value = q[name].strip()
        bounds = date_range(value, settings.zone)  # a FHIR date: no search prefix (ge2026 is none)
        if bounds is None:
            msg = f"{name} must be a FHIR date like 2026-01-31 (a date of care), not '{value}'"
            raise BadRequest(msg, issues=[Issue(code="value", diagnostics=msg, expression=(name,))])
        found[name] = value, bounds
    if "start" in found and "end" in found and found["end"][1][1] < found["start"][1][0]:
        msg = f"end ({found['end'][0]}) is before start ({found['start'][0]})"
        raise BadRequest(msg, issues=[Issue(code="value", diagnostics=msg, expression=("end",))])
    return (found["start"][0] if "start" in found else None), (found["end"][0] if "end" in found else None)


async def everything(request: Request) -> Response:
    """``GET Patient/[id]/$everything``: the patient and its compartment, paged (``start``, ``end``, ``_since``,
    ``_type``). Other parameters are reported as ignored, or refused with ``handling=strict``."""
    user = await current_user(request)
    settings = settings_of(request)
    pid = request.path_params["rid"]
    if request.path_params["rtype"] != "Patient":
        raise NotFound("$everything is defined on Patient only here")
    q = request.query_params
    unknown = [name for name in dict.fromkeys(q.keys()) if name not in _EVERYTHING_PARAMETERS]
    ignored = [f"$everything does not take '{name}' (it takes start, end, _since, _type and _count)"
               for name in unknown]
    if _strict(request):
        refuse_ignored(ignored, dict(zip(ignored, unknown, strict=True)))
    since = q.get("_since")
    _parse_instant("_since", since, settings)
    start, end = _care_dates(q, settings)
    types = types_named(list(q.multi_items())) or None
    page = await service_of(request).everything(principal=user, pid=pid, since=since, start=start, end=end,
                                                types=types, count=page_size(q.get("_count"), settings),
                                                cursor=q.get("_cursor"))
    return _searchset(request, f"Patient/{pid}/$everything", list(q.multi_items()), page, ignored)


async def conditional_update(request: Request) -> Response:
    rendering = rendering_of(request)
    user = await current_user(request)
    service, settings = service_of(request), settings_of(request)
    rtype = require_supported_type(request.path_params["rtype"])
    criteria = _criteria(request, "update")
    resource, _ = await read_resource(request, settings.max_body_bytes)
    result = await service.conditional_update(principal=user, rtype=rtype, criteria_text=criteria,
                                              resource=resource, if_match=_if_match(request))
    return _write_response(request, result, settings, rendering)


async def conditional_delete(request: Request) -> Response:
    rendering_of(request)
    user = await current_user(request)
    service = service_of(request)
    rtype = require_supported_type(request.path_params["rtype"])
    criteria = _criteria(request, "delete")
    result = await service.conditional_delete(principal=user, rtype=rtype, criteria_text=criteria)
    return _deleted_response(request, result)


def _deleted_response(request: Request, result: WriteResult | None) -> Response:
    headers = {} if result is None else {"ETag": etag(result.version.vid)}
    if _prefer_return(request) == "OperationOutcome":
        text = "nothing to delete" if result is None else f"{result.version.key} deleted"
        return fhir_response(operation_outcome([Issue(code="informational", severity="information",
                                                      diagnostics=text)]), rendering_of(request), headers=headers,
                             shape=False)
    return Response(status_code=204, headers=headers)


# ---- instance level -----------------------------------------------------------------------------------------

async def update(request: Request) -> Response:
    rendering = rendering_of(request)
    user = await current_user(request)
    service, settings = service_of(request), settings_of(request)
    rtype, rid = require_supported_type(request.path_params["rtype"]), request.path_params["rid"]
    resource, _ = await read_resource(request, settings.max_body_bytes)
    result = await service.update(principal=user, rtype=rtype, rid=rid, resource=resource,
                                  if_match=_if_match(request))
    return _write_response(request, result, settings, rendering)


async def _patch_body(request: Request, settings: Settings) -> Any:
    """A PATCH request's patch: a JSON Patch or a FHIRPath Patch (a Parameters resource)."""
    patch, kind = await read_resource(request, settings.max_body_bytes, allow_patch=True)
    if kind != "json-patch" and not (isinstance(patch, dict) and patch.get("resourceType") == "Parameters"):
        raise BadRequest("PATCH takes a JSON Patch (Content-Type: application/json-patch+json) or a FHIRPath Patch "
                         "(a Parameters resource, Content-Type: application/fhir+json or application/fhir+xml)")
    return patch


async def patch(request: Request) -> Response:
    rendering = rendering_of(request)
    user = await current_user(request)
    service, settings = service_of(request), settings_of(request)
    rtype, rid = require_supported_type(request.path_params["rtype"]), request.path_params["rid"]
    patch = await _patch_body(request, settings)
    result = await service.patch(principal=user, rtype=rtype, rid=rid, patch=patch, if_match=_if_match(request))
    return _write_response(request, result, settings, rendering)


async def conditional_patch(request: Request) -> Response:
    """``PATCH [type]?criteria`` (FHIR R4 http.html#patch): the one match patched; none 404, several 412."""
    rendering = rendering_of(request)
    user = await current_user(request)
    service, settings = service_of(request), settings_of(request)
    rtype = require_supported_type(request.path_params["rtype"])
    criteria = _criteria(request, "patch")
    patch = await _patch_body(request, settings)
    result = await service.conditional_patch(principal=user, rtype=rtype, criteria_text=criteria,
                                             patch=patch, if_match=_if_match(request))
    return _write_response(request, result, settings, rendering)


async def delete(request: Request) -> Response:
    rendering_of(request)
    user = await current_user(request)
    result = await service_of(request).delete(principal=user, rtype=request.path_params["rtype"],
                                              rid=request.path_params["rid"], if_match=_if_match(request))
    return _deleted_response(request, result)


async def reindex(request: Request) -> Response:
    """``POST [base]/$reindex`` (``_type=A,B``) or ``POST [base]/[type]/$reindex``: start a background job that
    brings stored resources up to the current search parameters; 202 with the job's status URL."""
    user = await current_user(request)
    settings = settings_of(request)
    rtype = request.path_params.get("rtype")
    types = [rtype] if rtype else types_named(list(request.query_params.multi_items())) or None
    job = await reindexer_of(request).start(principal=user, types=types)
    status_url = f"{settings.fhir_base}/$reindex/{job}"
    outcome = operation_outcome([Issue(severity="information", code="informational",
                                       diagnostics=f"Re-indexing started; its progress: GET {status_url}")])
    response = fhir_response(outcome, rendering_of(request), shape=False)
    response.status_code = 202
    response.headers["Content-Location"] = status_url
    return response


async def reindex_status(request: Request) -> Response:
    user = await current_user(request)
    status = await reindexer_of(request).status(principal=user, job=request.path_params["job"])
    return fhir_response(status, rendering_of(request), shape=False)


def fhir_routes() -> list[BaseRoute]:
    """The FHIR REST routes, relative to the base (``/fhir``). Order matters: literal segments (``_history``,
    ``$validate``, ``metadata``) before the ids they would otherwise match; read early, it is the most
    frequent request."""
    return [
        Route("/", batch_or_transaction, methods=["POST"]),
        Route("/", search_system, methods=["GET"]),
        Route("/metadata", metadata, methods=["GET"]),
        Route("/.well-known/smart-configuration", smart_config, methods=["GET"]),
        Route("/_history", history_system, methods=["GET"]),
        Route("/_search", search_system, methods=["POST"]),
        Route("/$reindex", reindex, methods=["POST"]),
        Route("/$reindex/{job}", reindex_status, methods=["GET"]),
        Route("/{rtype}/$reindex", reindex, methods=["POST"]),
        Route("/{rtype}/_history", history_type, methods=["GET"]),
        Route("/{rtype}/$validate", validate_type, methods=["POST"]),
        Route("/{rtype}/{rid}", read, methods=["GET"]),
        Route("/{rtype}/{rid}", update, methods=["PUT"]),
        Route("/{rtype}/{rid}", patch, methods=["PATCH"]),
        Route("/{rtype}/{rid}", delete, methods=["DELETE"]),
        Route("/{rtype}/{rid}/_history", history_instance, methods=["GET"]),
        Route("/{rtype}/{rid}/_history/{vid}", vread, methods=["GET"]),
        Route("/{rtype}/{rid}/$validate", validate_instance, methods=["POST"]),
        Route("/{rtype}/{rid}/$everything", everything, methods=["GET"]),
        Route("/{rtype}/_search", search_type, methods=["POST"]),
        Route("/{ctype}/{cid}/*", search_system, methods=["GET"]),
        Route("/{ctype}/{cid}/_search", search_system, methods=["POST"]),
        Route("/{ctype}/{cid}/{rtype}", search_type, methods=["GET"]),
        Route("/{ctype}/{cid}/{rtype}/_search", search_type, methods=["POST"]),
        Route("/{rtype}", create, methods=["POST"]),
        Route("/{rtype}", search_type, methods=["GET"]),
        Route("/{rtype}", conditional_update, methods=["PUT"]),
        Route("/{rtype}", conditional_patch, methods=["PATCH"]),
        Route("/{rtype}", conditional_delete, methods=["DELETE"]),
    ]


def root_routes() -> list[BaseRoute]:
    """Routes outside the /fhir mount: the base URL itself (FHIR clients POST Bundles to it, no slash) and
    the SMART configuration at the server root."""
    return [Route("/fhir", batch_or_transaction, methods=["POST"]),
            Route("/fhir", search_system, methods=["GET"]),
            Route("/.well-known/smart-configuration", smart_config, methods=["GET"])]
