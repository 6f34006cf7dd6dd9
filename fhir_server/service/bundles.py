"""Batch and transaction Bundles (FHIR R4 http.html#transaction).

A batch runs each entry on its own through the ResourceService. A transaction is all or nothing:
every entry is parsed, authorized, matched, rewritten and validated before anything is written; then the
store claims every resource the transaction changes and applies the changes (``ResourceStore.write_all``),
undoing them if the store fails part-way. Isolation: writers never interleave with a transaction (the
claims); readers may see its changes appear during the commit phase, which lasts milliseconds.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from fhir_server.auth.scopes import Principal
from fhir_server.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    HubError,
    Issue,
    NotFound,
    PreconditionFailed,
    operation_outcome,
)
from fhir_server.model.types import ID_RE, require_supported_type
from fhir_server.model.validation import validate_resource
from fhir_server.search import query_pairs, types_named
from fhir_server.search.entries import date_range
from fhir_server.service.etag import etag, not_modified, version_of_etag
from fhir_server.service.ids import new_id
from fhir_server.service.patching import apply_patch
from fhir_server.service.resources import ResourceService, WriteResult, instant, lock_names
from fhir_server.service.searchset import page_size, searchset
from fhir_server.settings import Settings
from fhir_server.storage import Version, VersionConflict, now_micros

__all__ = ["BundleService"]

# FHIR R4 http.html#trules: DELETE, then POST, then PUT/PATCH, then GET/HEAD
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


@dataclass
class _Entry:
    index: int
    method: str
    rtype: str
    rid: str | None
    vid: str | None
    query: str | None
    resource: Any
    full_url: str | None
    if_none_exist: str | None
    if_match: int | None
    # a read's conditions (FHIR R4 Bundle.entry.request.ifNoneMatch/ifModifiedSince, http.html#cread)
    if_none_match: str | None = None
    modified_by: int | None = None  # ifModifiedSince: its last microsecond at its precision
    target: str | None = None  # the id this entry writes
    matched: int | None = None  # a conditional write's: the version its criteria matched (written over that only)
    base: Version | None = None
    new: Version | None = None
    status: str = ""
    outcome: dict[str, Any] | None = None
    result: Version | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    patch: Any = None  # a PATCH entry's patch, its references resolved
    # a search over several types: "" (the system, ``?_type=…``) or "*" (``Patient/[id]/*``) as ``rtype``;
    # ``Patient/[id]/[type]`` and ``Patient/[id]/*`` name the compartment
    compartment: tuple[str, str] | None = None

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


def _patch_of(e: _Entry) -> Any:
    """The patch of a PATCH entry (FHIR R4 http.html#transaction): a FHIRPath Patch (a Parameters resource), or
    a JSON Patch in a Binary with contentType application/json-patch+json."""
    body = e.resource
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        return body
    if not (isinstance(body, dict) and body.get("resourceType") == "Binary"
            and body.get("contentType") == "application/json-patch+json" and isinstance(body.get("data"), str)):
        raise BadRequest("A PATCH entry needs a FHIRPath Patch (Parameters) or a JSON Patch in a Binary with "
                         "contentType application/json-patch+json", issues=[Issue(
                             code="invalid", diagnostics="PATCH entry: expected Parameters or a Binary",
                             expression=(f"{e.where}.resource",))])
    try:
        return orjson.loads(base64.b64decode(body["data"], validate=True))
    except (ValueError, orjson.JSONDecodeError):
        raise BadRequest("The Binary of a PATCH entry does not hold JSON", issues=[Issue(
            code="invalid", diagnostics="Binary.data is not base64 JSON", expression=(f"{e.where}.resource.data",))]
        ) from None


def _last_microsecond(text: str, settings: Settings) -> int | None:
    """The last microsecond an instant covers at its precision: ``…:00.123`` ends at ``…:00.123999`` (the hub
    renders ``meta.lastUpdated`` in milliseconds, so a client's copy stamped with it is current)."""
    found = date_range(text, settings.zone)
    if found is None:
        return None
    fraction = re.search(r"\.(\d+)", text)
    if fraction is not None and len(fraction.group(1)) < 6:
        return found[0] + int(10 ** (6 - len(fraction.group(1)))) - 1
    return found[1]


def _fail(entry: _Entry | None, exc: HubError) -> HubError:
    """The same error, located at its entry (FHIRPath from the Bundle)."""
    if entry is None:
        return exc
    given = entry.resource.get("resourceType") if isinstance(entry.resource, dict) else None
    roots = {entry.rtype} | ({given} if isinstance(given, str) else set())  # a PATCH entry's is Parameters

    def located(expression: str) -> str:
        if expression == entry.where or expression.startswith(f"{entry.where}."):
            return expression  # located already (a PATCH entry's body, read as the Bundle holds it)
        for root in roots:
            if expression == root or expression.startswith((f"{root}.", f"{root}[")):
                return f"{entry.where}.resource{expression[len(root):]}"
        return f"{entry.where}.{expression}"

    issues = [Issue(code=i.code, diagnostics=f"{entry.where}: {i.diagnostics}", severity=i.severity,
                    expression=tuple(located(e) for e in i.expression) or (entry.where,)) for i in exc.issues]
    return type(exc)(f"{entry.where}: {exc.message}", issues=issues, headers=exc.headers)


class BundleService:
    def __init__(self, *, resources: ResourceService, settings: Settings) -> None:
        self.resources = resources
        self.store = resources.store
        self.settings = settings

    async def process(self, *, principal: Principal, bundle: Any) -> dict[str, Any]:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise BadRequest("POST to the base takes a Bundle of type batch or transaction")
        kind = bundle.get("type")
        if kind not in ("batch", "transaction"):
            msg = f"Bundle.type must be batch or transaction, not {kind!r}"
            raise BadRequest(msg, issues=[Issue(code="value", diagnostics=msg, expression=("Bundle.type",))])
        raw_entries = bundle.get("entry") or []
        if not isinstance(raw_entries, list):
            raise BadRequest("Bundle.entry must be a list")
        if len(raw_entries) > self.settings.bundle_max_entries:
            raise BadRequest(f"The Bundle has {len(raw_entries)} entries; the limit is "
                             f"{self.settings.bundle_max_entries}", issues=[Issue(
                                 code="too-costly", diagnostics="Too many entries", expression=("Bundle.entry",))])
        if kind == "batch":
            return await self._batch(principal, raw_entries)
        return await self._transaction(principal, raw_entries)

    # ---- parsing ----------------------------------------------------------------------------------------

    def _parse(self, index: int, raw: Any) -> _Entry:
        where = f"Bundle.entry[{index}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
            raise BadRequest(f"{where}.request is missing", issues=[
                Issue(code="required", diagnostics="request is missing", expression=(f"{where}.request",))])
        request = raw["request"]
        method = request.get("method")
        if method is not None and (not isinstance(method, str) or method not in _ORDER):  # http-verb: not "get"
            raise BadRequest(f"{where}.request.method must be one of {', '.join(_ORDER)}", issues=[
                Issue(code="code-invalid", diagnostics=f"request.method must be one of {', '.join(_ORDER)}",
                      expression=(f"{where}.request.method",))])
        url = request.get("url")
        if method is None or not isinstance(url, str) or not url:
            raise BadRequest(f"{where}.request needs a method (GET, POST, PUT, PATCH, DELETE) and a url", issues=[
                Issue(code="required", diagnostics="request needs method and url", expression=(f"{where}.request",))])
        base = self.settings.fhir_base + "/"
        if url.startswith(base):
            url = url[len(base):]
        path, _, query = url.partition("?")
        parts = [p for p in path.split("/") if p]
        if_none_match, modified_by = self._read_conditions(where, method, request, reads=len(parts) in (2, 4))
        if method == "GET" and (not parts or (len(parts) == 3 and parts[2] != "_history")):
            return self._parse_search(index, parts, query)
        if not parts:
            raise BadRequest(f"{where}.request.url '{url}' names no resource type")
        rtype = require_supported_type(parts[0])
        rid = parts[1] if len(parts) > 1 else None
        vid = parts[3] if len(parts) == 4 and parts[2] == "_history" else None
        if len(parts) > 2 and vid is None:
            raise BadRequest(f"{where}.request.url '{url}' is not a resource or version URL")
        if_match = None
        if request.get("ifMatch"):
            if_match = version_of_etag(str(request["ifMatch"]))
            if if_match is None:
                raise BadRequest(f"{where}.request.ifMatch must be a version ETag like W/\"3\"")
        ine = request.get("ifNoneExist")
        return _Entry(index=index, method=method, rtype=rtype, rid=rid, vid=vid, query=query or None,
                      resource=raw.get("resource"), full_url=raw.get("fullUrl"),
                      if_none_exist=ine if isinstance(ine, str) and ine else None,
                      if_match=if_match, if_none_match=if_none_match, modified_by=modified_by)

    def _read_conditions(self, where: str, method: str, request: dict[str, Any], *,
                         reads: bool) -> tuple[str | None, int | None]:
        """A read entry's ifNoneMatch (ETags) and ifModifiedSince (an instant; as the last microsecond it
        covers); on any other entry (``reads``: the url names a resource or a version) they are an error, not
        silently ignored."""
        inm, ims = request.get("ifNoneMatch"), request.get("ifModifiedSince")
        for name, value in (("ifNoneMatch", inm), ("ifModifiedSince", ims)):
            if value is None:
                continue
            if method not in ("GET", "HEAD"):
                raise BadRequest(f"{where}.request.{name} applies to GET entries (a conditional read), not to "
                                 f"{method}", issues=[Issue(code="not-supported", diagnostics=f"{name} on {method}",
                                                            expression=(f"{where}.request.{name}",))])
            if not reads:
                raise BadRequest(f"{where}.request: ifNoneMatch and ifModifiedSince apply to reads, not searches",
                                 issues=[Issue(code="not-supported", diagnostics="a conditional search",
                                               expression=(f"{where}.request",))])
            if not isinstance(value, str) or not value.strip():
                raise BadRequest(f"{where}.request.{name} must be a string", issues=[Issue(
                    code="value", diagnostics=f"{name} is not a string", expression=(f"{where}.request.{name}",))])
        modified_by = None
        if ims is not None:
            modified_by = _last_microsecond(ims, self.settings)
            if modified_by is None:
                raise BadRequest(f"{where}.request.ifModifiedSince must be an instant like "
                                 "2026-11-26T09:30:00+08:00", issues=[Issue(
                                     code="value", diagnostics="ifModifiedSince is not an instant",
                                     expression=(f"{where}.request.ifModifiedSince",))])
        return inm, modified_by

    def _parse_search(self, index: int, parts: list[str], query: str) -> _Entry:
        """A GET of a system search (``?_type=…``) or of a compartment search (``Patient/[id]/[type or *]``)."""
        compartment = None
        rtype = ""
        if parts:
            compartment = (require_supported_type(parts[0]), parts[1])
            rtype = parts[2] if parts[2] == "*" else require_supported_type(parts[2])
        return _Entry(index=index, method="GET", rtype=rtype, rid=None, vid=None, query=query or None,
                      resource=None, full_url=None, if_none_exist=None, if_match=None, compartment=compartment)

    # ---- batch ------------------------------------------------------------------------------------------

    async def _batch(self, principal: Principal, raw_entries: list[Any]) -> dict[str, Any]:
        out: list[dict[str, Any]] = []
        for index, raw in enumerate(raw_entries):
            try:
                entry = self._parse(index, raw)
                out.append(await self._one(principal, entry))
            except HubError as exc:
                out.append({"response": {"status": f"{exc.status}", "outcome": operation_outcome(exc.issues)}})
        return {"resourceType": "Bundle", "type": "batch-response", "entry": out}

    async def _one(self, principal: Principal, e: _Entry) -> dict[str, Any]:
        service = self.resources
        result: WriteResult | Version | None
        if e.method in ("GET", "HEAD"):
            if e.rid is None:
                return {"resource": await self._search(principal, e), "response": {"status": "200 OK"}}
            if e.vid is not None:
                result = await service.vread(principal=principal, rtype=e.rtype, rid=e.rid, vid=e.vid)
            else:
                result = await service.read(principal=principal, rtype=e.rtype, rid=e.rid)
            if not_modified(result, if_none_match=e.if_none_match, modified_by=e.modified_by):
                return self._entry_json(result, "304 Not Modified", with_resource=False)
            return self._entry_json(result, "200 OK", with_resource=True)
        if e.method == "POST":
            result = await service.create(principal=principal, rtype=e.rtype, resource=e.resource,
                                          if_none_exist=e.if_none_exist)
        elif e.method == "PUT" and e.rid is not None:
            result = await service.update(principal=principal, rtype=e.rtype, rid=e.rid, resource=e.resource,
                                          if_match=e.if_match)
        elif e.method == "PUT" and e.query:
            result = await service.conditional_update(principal=principal, rtype=e.rtype, criteria_text=e.query,
                                                      resource=e.resource, if_match=e.if_match)
        elif e.method == "PATCH" and e.rid is not None:
            result = await service.patch(principal=principal, rtype=e.rtype, rid=e.rid, patch=_patch_of(e),
                                         if_match=e.if_match)
        elif e.method == "DELETE" and e.rid is not None:
            result = await service.delete(principal=principal, rtype=e.rtype, rid=e.rid, if_match=e.if_match)
        elif e.method == "DELETE" and e.query:
            result = await service.conditional_delete(principal=principal, rtype=e.rtype, criteria_text=e.query)
        else:
            raise BadRequest(f"{e.method} {e.rtype} needs an id or search criteria")
        if result is None:
            return {"response": {"status": "204 No Content"}}
        assert isinstance(result, WriteResult)
        status = "201 Created" if result.created and result.changed else "200 OK"
        if result.version.deleted:
            status = "204 No Content"
        return self._entry_json(result.version, status, with_resource=not result.version.deleted)

    def _entry_json(self, version: Version, status: str, *, with_resource: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        if with_resource and version.body is not None:
            entry["fullUrl"] = f"{self.settings.fhir_base}/{version.key}"
            entry["resource"] = orjson.loads(version.body)
        entry["response"] = {"status": status, "location": f"{version.key}/_history/{version.vid}",
                             "etag": etag(version.vid), "lastModified": instant(version.ts, self.settings)}
        return entry

    # ---- transaction ------------------------------------------------------------------------------------

    async def _transaction(self, principal: Principal, raw_entries: list[Any]) -> dict[str, Any]:
        entries = [self._parse(i, raw) for i, raw in enumerate(raw_entries)]
        for e in entries:
            self._authorize(principal, e)
        async for _ in self.resources.attempts():
            try:
                return await self._attempt(principal, entries)
            except VersionConflict:
                if any(e.if_match is not None for e in entries):
                    raise PreconditionFailed("A resource of this transaction was changed concurrently") from None
                # afresh from the Bundle: the attempt rewrote references to the ids it chose, and patched
                entries = [self._parse(i, raw) for i, raw in enumerate(raw_entries)]
                continue
        raise Conflict("The resources of this transaction are being changed by too many writers; try again")

    def _authorize(self, principal: Principal, e: _Entry) -> None:
        need = {"GET": "r", "HEAD": "r", "POST": "c", "PUT": "u", "PATCH": "u", "DELETE": "d"}[e.method]
        if e.rtype in ("", "*"):  # a search over several types: each type is checked when it runs
            return
        try:
            if principal.require(need, e.rtype, rid=e.rid) is not None:
                raise Forbidden("Transactions are not available to patient/ scopes yet; use a batch, whose "
                                "entries are checked one by one against the patient's compartment")
            if e.query or e.if_none_exist:
                principal.require("s", e.rtype)
        except HubError as exc:
            raise _fail(e, exc) from None

    async def _attempt(self, principal: Principal, entries: list[_Entry]) -> dict[str, Any]:
        names: set[str] = set()
        for e in entries:
            for query in (e.query, e.if_none_exist):
                if query and e.method not in ("GET", "HEAD"):
                    try:
                        criteria = self.resources.criteria(principal, e.rtype, query)
                    except HubError as exc:
                        raise _fail(e, exc) from None
                    names.update(lock_names(criteria, e.resource if e.method in ("POST", "PUT") else None))
        async with self.store.hold_locks(names):  # conditional writes' locks (lock_names): match-then-write cannot race
            ids = await self._resolve_targets(principal, entries)
            references: dict[str, str] = {}
            for e in entries:
                if e.method in ("POST", "PUT") and e.resource is not None:
                    e.resource = await self._rewrite(principal, e, e.resource, ids, references)
                elif e.method == "PATCH":  # the values a patch writes may refer to other entries too
                    try:
                        patch = _patch_of(e)
                    except HubError as exc:
                        raise _fail(e, exc) from None
                    e.patch = await self._rewrite(principal, e, patch, ids, references)
            changes = await self._prepare(entries)
            await self.store.write_all(changes)
            for new, _ in changes:
                if new.rtype == "SearchParameter":
                    self.resources.search_parameter_written(new)
        for e in sorted(entries, key=lambda x: _ORDER[x.method]):
            if e.method in ("GET", "HEAD"):
                # reads run after the commit (FHIR R4 http.html#trules); one that fails is answered in its
                # entry: failing the whole Bundle now would report a committed transaction as failed
                try:
                    e.extra = await self._one(principal, e)
                except HubError as exc:
                    e.extra = {"response": {"status": str(exc.status), "outcome": operation_outcome(exc.issues)}}
        return {"resourceType": "Bundle", "type": "transaction-response",
                "entry": [e.extra or self._write_entry(e) for e in entries]}

    async def _resolve_targets(self, principal: Principal, entries: list[_Entry]) -> dict[str, str]:
        """Decide the id each write entry targets; map fullUrls (urn:uuid:, urn:oid:) to Type/id."""
        ids: dict[str, str] = {}
        seen: set[str] = set()
        for e in sorted(entries, key=lambda x: _ORDER[x.method]):
            if e.method in ("GET", "HEAD"):
                continue
            try:
                if e.method == "POST":
                    if e.if_none_exist:
                        found = await self._matches(principal, e.rtype, e.if_none_exist)
                        if len(found) > 1:
                            raise PreconditionFailed(f"ifNoneExist matched {len(found)} {e.rtype} resources")
                        if found:
                            e.target, e.result, e.status = found[0].rid, found[0], "200 OK"
                    e.target = e.target or new_id()
                elif e.rid is not None:
                    if not ID_RE.match(e.rid):
                        raise BadRequest(f"'{e.rid}' is not a valid FHIR id")
                    e.target = e.rid
                elif e.query:
                    found = await self._matches(principal, e.rtype, e.query)
                    if len(found) > 1:
                        raise PreconditionFailed(f"The criteria matched {len(found)} {e.rtype} resources")
                    body_id = e.resource.get("id") if isinstance(e.resource, dict) else None
                    if found:
                        e.target, e.matched = found[0].rid, found[0].vid
                    elif e.method == "PUT":
                        e.target = body_id if isinstance(body_id, str) else new_id()
                    else:
                        e.status = "204 No Content"  # conditional delete that matched nothing
                        continue
                else:
                    raise BadRequest(f"{e.method} {e.rtype} needs an id or search criteria")
            except HubError as exc:
                raise _fail(e, exc) from None
            key = f"{e.rtype}/{e.target}"
            if key in seen and e.result is None:  # FHIR R4 http.html#trules: one entry per resource
                raise _fail(e, BadRequest(f"{key} is changed by more than one entry of the transaction"))
            seen.add(key)
            if e.full_url:
                ids[e.full_url] = key
        return ids

    async def _matches(self, principal: Principal, rtype: str, query: str) -> list[Version]:
        criteria = self.resources.criteria(principal, rtype, query)
        return await self.resources.match(criteria, rtype)

    async def _rewrite(self, principal: Principal, e: _Entry, value: Any, ids: dict[str, str],
                       cache: dict[str, str]) -> Any:
        """Replace references to fullUrls of this Bundle and conditional references by Type/id (a conditional
        reference is a search: the principal must be allowed it)."""
        if isinstance(value, list):
            return [await self._rewrite(principal, e, v, ids, cache) for v in value]
        if not isinstance(value, dict):
            return value
        out = {k: await self._rewrite(principal, e, v, ids, cache) for k, v in value.items()}
        ref = out.get("reference")
        if isinstance(ref, str):
            if ref in ids:
                out["reference"] = ids[ref]
            elif "?" in ref and not ref.startswith(("http:", "https:", "urn:")):
                if ref not in cache:
                    rtype, _, query = ref.partition("?")
                    try:
                        found = await self._matches(principal, require_supported_type(rtype), query)
                    except HubError as exc:
                        raise _fail(e, exc) from None
                    if len(found) != 1:  # FHIR R4 http.html#trules: a conditional reference must match one
                        raise _fail(e, PreconditionFailed(
                            f"The conditional reference {rtype}?… matched {len(found)} resources, not one"))
                    cache[ref] = found[0].key
                out["reference"] = cache[ref]
            elif ref.startswith(("urn:uuid:", "urn:oid:")):
                raise _fail(e, BadRequest(f"Reference {ref} names no entry of this transaction"))
        return out

    async def _prepare(self, entries: list[_Entry]) -> list[tuple[Version, Version | None]]:
        """Validate and build every new version; read the versions they supersede."""
        changes: list[tuple[Version, Version | None]] = []
        writes = [e for e in sorted(entries, key=lambda x: _ORDER[x.method])
                  if e.method not in ("GET", "HEAD") and e.target is not None and e.result is None]
        wanted: dict[str, list[str]] = {}
        for e in writes:
            if e.method != "POST":  # a POST's id is new: nothing to read
                assert e.target is not None
                wanted.setdefault(e.rtype, []).append(e.target)
        bases: dict[tuple[str, str], Version] = {}
        for rtype, rids in wanted.items():  # one round trip per type, not one per entry
            bases.update({(rtype, rid): v for rid, v in (await self.store.current_many(rtype, rids)).items()})
        for e in writes:
            assert e.target is not None
            try:
                base = bases.get((e.rtype, e.target))
                if e.matched is not None and (base is None or base.vid != e.matched):
                    # written since its criteria matched it, perhaps to match no more: match again
                    raise VersionConflict(f"{e.rtype}/{e.target} changed after its criteria matched it")
                if e.method == "PATCH":
                    if base is None or base.body is None:
                        raise NotFound(f"{e.rtype}/{e.target} is not there to patch")
                    e.resource = apply_patch(base.body, e.patch, rtype=e.rtype, rid=e.target)
                if e.if_match is not None and (base is None or base.vid != e.if_match):
                    raise PreconditionFailed(f"{e.rtype}/{e.target} is not at version {e.if_match}")
                if e.method == "DELETE":
                    if base is None or base.deleted:
                        e.status = "204 No Content" if base is not None else "404 Not Found"
                        if base is None:
                            raise NotFound(f"{e.rtype}/{e.target} is not known")
                        continue
                    new = Version(rtype=e.rtype, rid=e.target, vid=base.vid + 1, ts=now_micros(),
                                  method="DELETE", body=None)
                else:
                    resource = e.resource
                    if e.method == "PUT" and isinstance(resource, dict) and resource.get("id") is None and e.query:
                        resource = {**resource, "id": e.target}
                    validate_resource(resource, expected_type=e.rtype,
                                      expected_id=e.target if e.method == "PUT" else None)
                    new = self.resources.new_version(rtype=e.rtype, rid=e.target, resource=resource,
                                                     method=e.method, base=base)
            except HubError as exc:
                raise _fail(e, exc) from None
            e.base, e.new = base, new
            changes.append((new, base))
        return changes

    async def _search(self, principal: Principal, e: _Entry) -> dict[str, Any]:
        """A search entry (``GET Patient?family=王``): its first page as a searchset Bundle."""
        pairs = query_pairs(e.query or "")
        count = page_size(dict(pairs).get("_count"), self.settings)  # a bad _count is a 400, as over REST
        cursor = dict(pairs).get("_cursor")
        path = e.rtype if e.compartment is None else f"{e.compartment[0]}/{e.compartment[1]}/{e.rtype}"
        summary_count = ("_summary", "count") in pairs
        if e.rtype in ("", "*"):
            ignored, page = await self.resources.search_many(
                principal=principal, types=types_named(pairs) or None, pairs=pairs, count=count, cursor=cursor,
                compartment=e.compartment)
        else:
            query, page = await self.resources.search(principal=principal, rtype=e.rtype, pairs=pairs, count=count,
                                                      cursor=cursor, compartment=e.compartment)
            ignored, summary_count = query.ignored, query.summary_count
        base = self.settings.fhir_base
        return searchset(page, url=f"{base}/{path}".rstrip("/"), base=base, params=pairs, ignored=ignored,
                         summary_count=summary_count, resource_of=lambda v: orjson.loads(v.body or b"{}"))

    def _write_entry(self, e: _Entry) -> dict[str, Any]:
        if e.result is not None:  # ifNoneExist matched: nothing written
            return self._entry_json(e.result, "200 OK", with_resource=False)
        if e.new is None:
            return {"response": {"status": e.status or "204 No Content"}}
        status = "204 No Content" if e.new.deleted else (
            "201 Created" if e.base is None or e.base.deleted else "200 OK")
        return self._entry_json(e.new, status, with_resource=False)

