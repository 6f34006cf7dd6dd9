"""FHIR R4 RESTful API (http.html): thin handlers that decode, call the service and encode."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from fhir_server.api.capability import capability_statement, smart_configuration
from fhir_server.api.deps import CurrentUser, ServiceDep, SettingsDep
from fhir_server.api.formats import Rendering, fhir_response, read_resource, rendering_of
from fhir_server.errors import BadRequest, Issue, MethodNotAllowed, operation_outcome
from fhir_server.model.types import require_supported_type
from fhir_server.service import HistoryResult, ResourceService, WriteResult, instant
from fhir_server.settings import Settings
from fhir_server.storage import Version

__all__ = ["router", "well_known"]

router = APIRouter()
well_known = APIRouter()

_STARTED = datetime.now(UTC).isoformat(timespec="seconds")


# ---- header helpers ---------------------------------------------------------------------------------------

def _etag(vid: int) -> str:
    return f'W/"{vid}"'


def _http_date(ts: int) -> str:
    return format_datetime(datetime.fromtimestamp(ts / 1_000_000, UTC), usegmt=True)


def _version_headers(version: Version, settings: Settings, *, location: bool = False) -> dict[str, str]:
    headers = {"ETag": _etag(version.vid), "Last-Modified": _http_date(version.ts)}
    if location:
        headers["Location"] = f"{settings.fhir_base}/{version.key}/_history/{version.vid}"
    return headers


def _if_match(request: Request) -> int | None:
    """``If-Match: W/"n"`` (FHIR R4 http.html#concurrency) as the version number n."""
    value = request.headers.get("if-match")
    if value is None:
        return None
    tag = value.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise BadRequest(f"If-Match must be a version ETag like W/\"3\", not {value!r}")
    return int(tag)


def _not_modified(request: Request, version: Version) -> bool:
    inm = request.headers.get("if-none-match")
    if inm is not None:
        tags = {t.strip().removeprefix("W/").strip('"') for t in inm.split(",")}
        return "*" in tags or str(version.vid) in tags
    ims = request.headers.get("if-modified-since")
    if ims is not None:
        try:
            since = parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
        modified = datetime.fromtimestamp(version.ts // 1_000_000, UTC)
        return modified <= since
    return False


def _prefer_return(request: Request) -> str:
    for part in request.headers.get("prefer", "").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip() == "return":
            return value.strip().strip('"')
    return "representation"


def _criteria(request: Request) -> str:
    return request.url.query


def _if_none_exist(request: Request) -> str | None:
    value = request.headers.get("if-none-exist")
    if value is None:
        return None
    return value.split("?", 1)[1] if "?" in value else value


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

@router.get("/metadata")
async def metadata(request: Request, settings: SettingsDep) -> Response:
    rendering = rendering_of(request)
    statement = capability_statement(settings, software_date=_STARTED)
    return fhir_response(statement, Rendering(rendering.fmt, rendering.pretty, "false", None), shape=False)


@well_known.get("/.well-known/smart-configuration")
@router.get("/.well-known/smart-configuration")
async def smart_config(settings: SettingsDep) -> Response:
    return Response(orjson.dumps(smart_configuration(settings)), media_type="application/json")


# ---- history ------------------------------------------------------------------------------------------------

def _parse_instant(name: str, value: str | None, settings: Settings, *, end: bool = False) -> int | None:
    """A FHIR date/dateTime/instant parameter as store microseconds; no zone means the hub's zone."""
    if value is None:
        return None
    text = value.strip()
    try:
        if len(text) == 4:
            parsed = datetime(int(text), 1, 1, tzinfo=settings.zone)
            upper = parsed.replace(year=parsed.year + 1)
        elif len(text) == 7:
            parsed = datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=settings.zone)
            upper = (parsed + timedelta(days=32)).replace(day=1)
        else:
            parsed = datetime.fromisoformat(text)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=settings.zone)
            upper = parsed + (timedelta(days=1) if len(text) == 10 else timedelta(microseconds=1))
    except ValueError as exc:
        raise BadRequest(f"{name} must be a FHIR instant like 2026-01-31T08:00:00+08:00", issues=[
            Issue(code="value", diagnostics=f"{name} must be a FHIR instant like 2026-01-31T08:00:00+08:00")]) from exc
    chosen = upper - timedelta(microseconds=1) if end else parsed
    return int(chosen.timestamp() * 1_000_000)


async def _history(request: Request, service: ResourceService, settings: Settings, user: Any,
                   rtype: str | None, rid: str | None) -> Response:
    rendering = rendering_of(request)
    q = request.query_params
    count_text = q.get("_count", str(settings.history_default_count))
    if not count_text.isdigit():
        raise BadRequest("_count must be a non-negative integer")
    count = min(int(count_text), settings.history_max_count)
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
        entry["response"] = {"status": status, "etag": _etag(v.vid), "lastModified": instant(v.ts, settings)}
        entries.append(entry)
    return {"resourceType": "Bundle", "type": "history", "link": links, "entry": entries}


@router.get("/_history")
async def history_system(request: Request, service: ServiceDep, settings: SettingsDep, user: CurrentUser) -> Response:
    return await _history(request, service, settings, user, None, None)


@router.get("/{rtype}/_history")
async def history_type(rtype: str, request: Request, service: ServiceDep, settings: SettingsDep,
                       user: CurrentUser) -> Response:
    require_supported_type(rtype)
    return await _history(request, service, settings, user, rtype, None)


# read is matched early (it is the most frequent request); only /{rtype}/_history must come before it
@router.get("/{rtype}/{rid}")
async def read(rtype: str, rid: str, request: Request, service: ServiceDep, settings: SettingsDep,
               user: CurrentUser) -> Response:
    rendering = rendering_of(request)
    version = await service.read(principal=user, rtype=rtype, rid=rid)
    headers = _version_headers(version, settings)
    if _not_modified(request, version):
        return Response(status_code=304, headers=headers)
    return fhir_response(version.body, rendering, headers=headers)


@router.get("/{rtype}/{rid}/_history")
async def history_instance(rtype: str, rid: str, request: Request, service: ServiceDep, settings: SettingsDep,
                           user: CurrentUser) -> Response:
    require_supported_type(rtype)
    return await _history(request, service, settings, user, rtype, rid)


@router.get("/{rtype}/{rid}/_history/{vid}")
async def vread(rtype: str, rid: str, vid: str, request: Request, service: ServiceDep, settings: SettingsDep,
                user: CurrentUser) -> Response:
    rendering = rendering_of(request)
    version = await service.vread(principal=user, rtype=rtype, rid=rid, vid=vid)
    headers = _version_headers(version, settings)
    if _not_modified(request, version):
        return Response(status_code=304, headers=headers)
    return fhir_response(version.body, rendering, headers=headers)


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


@router.post("/{rtype}/$validate")
async def validate_type(rtype: str, request: Request, service: ServiceDep, settings: SettingsDep,
                        user: CurrentUser) -> Response:
    return await _validate(request, service, settings, user, rtype, None)


@router.post("/{rtype}/{rid}/$validate")
async def validate_instance(rtype: str, rid: str, request: Request, service: ServiceDep, settings: SettingsDep,
                            user: CurrentUser) -> Response:
    return await _validate(request, service, settings, user, rtype, rid)


# ---- type level: create, conditional update, conditional delete --------------------------------------------

@router.post("/{rtype}")
async def create(rtype: str, request: Request, service: ServiceDep, settings: SettingsDep,
                 user: CurrentUser) -> Response:
    rendering = rendering_of(request)
    require_supported_type(rtype)
    resource, _ = await read_resource(request, settings.max_body_bytes)
    result = await service.create(principal=user, rtype=rtype, resource=resource,
                                  if_none_exist=_if_none_exist(request))
    return _write_response(request, result, settings, rendering)


@router.get("/{rtype}")
async def search_type(rtype: str, user: CurrentUser) -> Response:
    require_supported_type(rtype)
    raise MethodNotAllowed(f"Search on {rtype} is not implemented yet; read by id, or use history")


@router.put("/{rtype}")
async def conditional_update(rtype: str, request: Request, service: ServiceDep, settings: SettingsDep,
                             user: CurrentUser) -> Response:
    rendering = rendering_of(request)
    require_supported_type(rtype)
    if not _criteria(request):
        raise MethodNotAllowed("PUT on a type needs search criteria (conditional update), e.g. ?identifier=s|v")
    resource, _ = await read_resource(request, settings.max_body_bytes)
    result = await service.conditional_update(principal=user, rtype=rtype, criteria_text=_criteria(request),
                                              resource=resource, if_match=_if_match(request))
    return _write_response(request, result, settings, rendering)


@router.delete("/{rtype}")
async def conditional_delete(rtype: str, request: Request, service: ServiceDep, user: CurrentUser) -> Response:
    rendering_of(request)
    require_supported_type(rtype)
    if not _criteria(request):
        raise MethodNotAllowed("DELETE on a type needs search criteria (conditional delete), e.g. ?identifier=s|v")
    result = await service.conditional_delete(principal=user, rtype=rtype, criteria_text=_criteria(request))
    return _deleted_response(request, result)


def _deleted_response(request: Request, result: WriteResult | None) -> Response:
    headers = {} if result is None else {"ETag": _etag(result.version.vid)}
    if _prefer_return(request) == "OperationOutcome":
        text = "nothing to delete" if result is None else f"{result.version.key} deleted"
        return fhir_response(operation_outcome([Issue(code="informational", severity="information",
                                                      diagnostics=text)]), rendering_of(request), headers=headers,
                             shape=False)
    return Response(status_code=204, headers=headers)


# ---- instance level -----------------------------------------------------------------------------------------

@router.put("/{rtype}/{rid}")
async def update(rtype: str, rid: str, request: Request, service: ServiceDep, settings: SettingsDep,
                 user: CurrentUser) -> Response:
    rendering = rendering_of(request)
    require_supported_type(rtype)
    resource, _ = await read_resource(request, settings.max_body_bytes)
    result = await service.update(principal=user, rtype=rtype, rid=rid, resource=resource,
                                  if_match=_if_match(request))
    return _write_response(request, result, settings, rendering)


@router.patch("/{rtype}/{rid}")
async def patch(rtype: str, rid: str, request: Request, service: ServiceDep, settings: SettingsDep,
                user: CurrentUser) -> Response:
    rendering = rendering_of(request)
    require_supported_type(rtype)
    operations, kind = await read_resource(request, settings.max_body_bytes, allow_patch=True)
    if kind != "json-patch":
        raise BadRequest("PATCH takes a JSON Patch body (Content-Type: application/json-patch+json)")
    result = await service.patch(principal=user, rtype=rtype, rid=rid, operations=operations,
                                 if_match=_if_match(request))
    return _write_response(request, result, settings, rendering)


@router.delete("/{rtype}/{rid}")
async def delete(rtype: str, rid: str, request: Request, service: ServiceDep, user: CurrentUser) -> Response:
    rendering_of(request)
    result = await service.delete(principal=user, rtype=rtype, rid=rid, if_match=_if_match(request))
    return _deleted_response(request, result)
