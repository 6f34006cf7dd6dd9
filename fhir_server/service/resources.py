"""The service layer for resources: every read and write from every entry point goes through here.

It authorizes (scopes), validates, versions and indexes; the store only keeps documents.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import orjson

from fhir_server.auth.scopes import Principal
from fhir_server.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    HubError,
    Issue,
    NotFound,
    PreconditionFailed,
    UnprocessableEntity,
)
from fhir_server.model.types import ID_RE, SUPPORTED_TYPES, require_supported_type
from fhir_server.model.validation import validate_resource
from fhir_server.search import (
    SearchEngine,
    SearchPage,
    SearchQuery,
    compartment_clause,
    entry_keys,
    parse_search,
    patient_compartment_params,
    query_pairs,
    refuse_ignored,
)
from fhir_server.search.compartment import care_date, in_patient_compartment
from fhir_server.search.index_order import marks_of, order_marks
from fhir_server.search.keys import hexs
from fhir_server.search.paths import check_syntax
from fhir_server.search.query import MODIFIERS, Include
from fhir_server.search.registry import CODE_RE, set_custom
from fhir_server.service.etag import etag
from fhir_server.service.ids import new_id
from fhir_server.service.patching import apply_patch
from fhir_server.settings import Settings
from fhir_server.storage import LockBusy, ResourceStore, Version, VersionConflict, now_micros
from fhir_server.storage.versions import split_item

_Written = TypeVar("_Written")  # what a conditional write returns

__all__ = ["HistoryResult", "ResourceService", "WriteResult", "instant", "lock_names", "require_search"]


def _compartment_members() -> list[str]:
    """The types in a Patient compartment (FHIR R4 CompartmentDefinition): the patient first."""
    return ["Patient", *sorted(t for t in SUPPORTED_TYPES if t != "Patient" and patient_compartment_params(t))]


def instant(ts_micros: int, settings: Settings) -> str:
    """FHIR ``instant`` of a store timestamp in the hub's zone, with its offset (e.g. +08:00)."""
    return datetime.fromtimestamp(ts_micros / 1_000_000, settings.zone).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class WriteResult:
    version: Version
    created: bool  # 201 rather than 200
    changed: bool = True  # False: conditional create matched an existing resource, nothing written


@dataclass(frozen=True, slots=True)
class HistoryResult:
    versions: list[Version]
    next_cursor: str | None


class ResourceService:
    """Create, read, update, patch, delete and history of resources, with their conditional forms."""

    def __init__(self, *, store: ResourceStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.engine = SearchEngine(store=store, settings=settings)
        store.before_entries = self.engine.spans.cover  # the longest date spans cover every entry written
        self._search_parameters: dict[str, tuple[int, dict[str, Any] | None]] = {}  # id -> (vid, usable SP)
        # SearchParameters written here while a refresh reads the store, one dict per refresh in progress
        self._written_during_refresh: list[dict[str, Version]] = []

    # ---- reads ----------------------------------------------------------------------------------------

    async def read(self, *, principal: Principal, rtype: str, rid: str, with_index: bool = False) -> Version:
        require_supported_type(rtype)
        patient = principal.require("r", rtype, rid=rid)
        version = await self.store.current(rtype, rid, with_index=with_index) if ID_RE.match(rid) else None
        if version is None:
            raise NotFound(f"{rtype}/{rid} is not known")
        _keep_to_compartment(patient, version)
        if version.deleted:
            raise Gone(f"{rtype}/{rid} was deleted", headers={"ETag": etag(version.vid)})
        return version

    async def vread(self, *, principal: Principal, rtype: str, rid: str, vid: str) -> Version:
        require_supported_type(rtype)
        patient = principal.require("r", rtype, rid=rid)
        version = None
        if ID_RE.match(rid) and vid.isdigit() and len(vid) < 12:
            version = await self.store.version(rtype, rid, int(vid))
        if version is None:
            raise NotFound(f"{rtype}/{rid}/_history/{vid} is not known")
        _keep_to_compartment(patient, version)
        if version.deleted:
            raise Gone(f"{rtype}/{rid} version {vid} is a deletion")
        return version

    async def history(self, *, principal: Principal, rtype: str | None, rid: str | None, since: int | None,
                      at: int | None, count: int, cursor: str | None) -> HistoryResult:
        patient = None
        if rtype is not None:
            require_supported_type(rtype)
            patient = principal.require("r" if rid else "s", rtype, rid=rid)
            if patient is not None and rid is None:
                raise Forbidden(f"Type history of {rtype} is not available to patient/ scopes (it needs search "
                                "by compartment); read the patient's resources one by one")
        elif not any(g.rtype == "*" and "s" in g.permissions and g.context != "patient" for g in principal.grants):
            raise Forbidden("System history needs a scope on all types, e.g. system/*.rs")
        count = max(0, min(count, self.settings.history_max_count))
        if count == 0:  # FHIR R4 search.html#count: _count=0 asks for no entries
            return HistoryResult([], None)
        if rtype is not None and rid is not None:
            before = int(cursor) if cursor and cursor.isdigit() else None
            current = await self.store.current(rtype, rid, with_index=False) if ID_RE.match(rid) else None
            if current is None:
                raise NotFound(f"{rtype}/{rid} is not known")
            _keep_to_compartment(patient, current)  # only a resource in the compartment now shows its history
            versions, below = await self.store.instance_history(
                current=current, since=since, at=at, count=count, before_vid=before)
            if patient is not None:  # and of it, the versions that were in the compartment
                versions = [v for v in versions if v.body is None or
                            in_patient_compartment(orjson.loads(v.body), patient)]
            return HistoryResult(versions, None if below is None else str(below))
        parsed: tuple[int, str] | None = None
        if cursor:
            ts, _, key = cursor.partition(":")
            if not ts.isdigit() or not key:
                msg = "The history page cursor is not valid; start again from the first page"
                raise BadRequest(msg, issues=[Issue(code="value", diagnostics=msg, expression=("_cursor",))])
            parsed = (int(ts), key)
        page = await self.store.history_page(rtype=rtype, since=since, at=at, count=count, cursor=parsed)
        nxt = None if page.next_cursor is None else f"{page.next_cursor[0]}:{page.next_cursor[1]}"
        return HistoryResult(page.versions, nxt)

    def parse(self, rtype: str, pairs: list[tuple[str, str]], *, strict: bool = False,
              searched: frozenset[str] | None = None) -> SearchQuery:
        return parse_search(rtype, pairs, zone=self.settings.zone, base_url=self.settings.fhir_base, strict=strict,
                            searched=searched)

    def criteria(self, principal: Principal, rtype: str, text: str) -> SearchQuery:
        """The search criteria of a conditional operation or reference (any search; unknown parameters are
        refused), which ``principal`` must be allowed to search (``require_search``)."""
        query = self.parse(rtype, query_pairs(text), strict=True)
        if not query.clauses:
            raise BadRequest("A conditional operation needs search criteria", issues=[
                Issue(code="required", diagnostics="A conditional operation needs search criteria, e.g. "
                      "identifier=system|value")])
        require_search(principal, query)
        return query

    async def search(self, *, principal: Principal, rtype: str, pairs: list[tuple[str, str]], count: int,
                     cursor: str | None, strict: bool = False,
                     compartment: tuple[str, str] | None = None) -> tuple[SearchQuery, SearchPage]:
        """A page of a type-level (or compartment) search; with patient/ scopes, within the patient's compartment."""
        require_supported_type(rtype)
        principal.require("s", rtype)
        query = self.parse(rtype, pairs, strict=strict)
        patient = require_search(principal, query)
        if compartment is not None:
            query.clauses.append(self._compartment(rtype, *compartment))
        if patient is not None:
            query.clauses.append(self._compartment(rtype, "Patient", patient, forbidden=True))
        count = max(0, min(count, self.settings.history_max_count))
        page = await self.engine.page(query, count=count, cursor=cursor)
        page.included = [v for v in page.included if _readable(principal, v)]
        return query, page

    async def search_types(self, *, principal: Principal, queries: list[SearchQuery], count: int,
                           cursor: str | None) -> SearchPage:
        """One page over several searches (``search_many``'s), each kept to the token's patient's compartment
        when only ``patient/`` scopes allow it; included resources only where the token may read them."""
        for query in queries:
            patient = require_search(principal, query)
            if patient is not None:
                query.clauses.append(self._compartment(query.rtype, "Patient", patient, forbidden=True))
        count = max(0, min(count, self.settings.history_max_count))
        page = await self.engine.page_of_many(queries, count=count, cursor=cursor)
        page.included = [v for v in page.included if _readable(principal, v)]
        return page

    async def search_many(self, *, principal: Principal, types: list[str] | None, pairs: list[tuple[str, str]],
                          count: int, cursor: str | None, strict: bool = False,
                          compartment: tuple[str, str] | None = None,
                          referenced: frozenset[str] = frozenset(),
                          care: tuple[str | None, str | None] | None = None) -> tuple[list[str], SearchPage]:
        """A page of one search over several types: ``types`` (from ``_type``), else every type the principal may
        search (system search) or of the ``compartment`` (``Patient/[id]/*``). Returns what was ignored, and the
        page; with ``referenced``, the page includes the resources of those types that its matches refer to; with
        ``care`` (start, end: ``$everything``), each type's resources dated by care meet that period.

        A parameter that some searched types define and others do not selects nothing of the others
        (``GET [base]?gender=male`` finds no Observation); a parameter none of them defines is ignored and
        reported, or refused with ``strict``, as in a type-level search."""
        if compartment is not None and compartment[0] != "Patient":
            raise BadRequest(f"Compartment search is available for Patient compartments, not {compartment[0]}")
        members = _compartment_members() if compartment is not None else sorted(SUPPORTED_TYPES)
        if types is None:  # all types: those the token may search (with _type, a type it may not is a 403)
            members = [t for t in members if principal.allows("s", t)] or members
        else:
            for t in types:
                require_supported_type(t)
                if t not in members:
                    raise BadRequest(f"_type: {t} is not in the Patient compartment")
            wanted = set(types)
            order = members if compartment is not None else list(dict.fromkeys(types))
            members = [t for t in order if t in wanted]
        queries = [self.parse(t, pairs, searched=frozenset(members)) for t in members]
        several = len(queries) > 1
        unknown = set.intersection(*({code for code, _ in q.undefined} for q in queries)) if queries else set()
        ignored = [f"Search parameter '{code}' is not defined for any of the types searched"
                   for code in sorted(unknown)] if several else []
        at = {m: code for m, code in zip(ignored, sorted(unknown), strict=True)}
        notes, kept = [], []
        for query in queries:
            lacking = [msg for code, msg in query.undefined if code not in unknown]
            if lacking:  # the type has no match
                if types is not None:
                    notes += [f"{msg}: no {query.rtype} matches" for msg in lacking]
                continue
            undefined = {msg for _, msg in query.undefined} if several else set()
            ignored += [m for m in query.ignored if m not in undefined and m not in ignored]
            at.update(query.ignored_at)
            if compartment is not None:
                query.clauses.append(self._compartment(query.rtype, *compartment))
            if care is not None and (dated := care_date(query.rtype)) is not None:
                start, end = care
                period = ([(dated, f"ge{start}")] if start else []) + ([(dated, f"le{end}")] if end else [])
                query.clauses += self.parse(query.rtype, period).clauses
            if referenced:
                query.includes.append(Include(query.rtype, "*", referenced, iterate=False))
            kept.append(query)
        if strict:
            refuse_ignored(ignored, at)
        ignored += notes
        return ignored, await self.search_types(principal=principal, queries=kept, count=count, cursor=cursor)

    def _compartment(self, rtype: str, ctype: str, cid: str, *, forbidden: bool = False) -> Any:
        if ctype != "Patient":
            raise BadRequest(f"Compartment search is available for Patient compartments, not {ctype}")
        params = patient_compartment_params(rtype)
        if rtype != ctype and not params:
            msg = f"{rtype} resources are not in the Patient compartment (FHIR R4 CompartmentDefinition)"
            raise Forbidden(msg) if forbidden else BadRequest(msg)
        return compartment_clause(rtype, ctype, cid, params)

    async def everything(self, *, principal: Principal, pid: str, since: str | None, types: list[str] | None,
                         count: int, cursor: str | None, start: str | None = None,
                         end: str | None = None) -> SearchPage:
        """``Patient/[id]/$everything``: the patient and every resource in its compartment, paged; each page
        includes the resources its matches refer to that are in no patient's compartment (practitioners,
        organizations, locations, medications, devices: FHIR R4 says $everything SHOULD return "any resource
        referenced from those"); resources of a compartment type come as matches, this patient's only.
        ``_type`` chooses among both kinds and must name a compartment type. ``start`` and ``end`` (FHIR dates)
        keep the resources whose date of care (compartment.py ``care_date``) meets that period (``ge`` start,
        ``le`` end: a stay that began before ``start`` and ended after it is kept; one without the date is not);
        a type without a date of care is returned whole."""
        await self.read(principal=principal, rtype="Patient", rid=pid)
        members = set(_compartment_members())
        for t in types or ():
            require_supported_type(t)
        referenced = frozenset(t for t in (SUPPORTED_TYPES if types is None else types) if t not in members)
        searched = None if types is None else [t for t in types if t in members]
        if searched == []:
            raise BadRequest(f"_type: {', '.join(types or [])} come only as resources that the patient's "
                             "compartment refers to: name a type of the Patient compartment too",
                             issues=[Issue(code="value", diagnostics="_type names no type of the Patient "
                                           "compartment", expression=("_type",))])
        _, page = await self.search_many(principal=principal, types=searched, count=count, cursor=cursor,
                                         pairs=[("_lastUpdated", f"ge{since}")] if since else [],
                                         compartment=("Patient", pid), referenced=referenced,
                                         care=(start, end) if start or end else None)
        return page

    # ---- writes ---------------------------------------------------------------------------------------

    async def validate(self, *, principal: Principal, rtype: str, resource: Any, rid: str | None = None) -> None:
        """``$validate``: the checks a write would make, without storing."""
        require_supported_type(rtype)
        principal.require("r", rtype, rid=rid)
        validate_resource(resource, expected_type=rtype, expected_id=rid if rid and isinstance(resource, dict)
                          and "id" in resource else None)

    async def create(self, *, principal: Principal, rtype: str, resource: Any,
                     if_none_exist: str | None = None) -> WriteResult:
        require_supported_type(rtype)
        patient = principal.require("c", rtype)
        validate_resource(resource, expected_type=rtype)
        _keep_body_to_compartment(patient, resource)
        if if_none_exist is None:
            return await self._write(rtype=rtype, rid=new_id(), resource=resource, method="POST",
                                     expected=None, must_be_new=True)
        _no_search_for_patient_scopes(principal.require("s", rtype), "Conditional create")
        criteria = self.criteria(principal, rtype, if_none_exist)
        async with self._guard(criteria, resource):
            matches = await self.match(criteria, rtype)
            if len(matches) > 1:
                raise PreconditionFailed(f"If-None-Exist matched {len(matches)} {rtype} resources; be more specific")
            if matches:  # FHIR R4 http.html#ccreate: one match -> 200 OK, nothing created
                return WriteResult(matches[0], created=False, changed=False)
            return await self._write(rtype=rtype, rid=new_id(), resource=resource, method="POST",
                                     expected=None, must_be_new=True)

    async def update(self, *, principal: Principal, rtype: str, rid: str, resource: Any,
                     if_match: int | None = None) -> WriteResult:
        require_supported_type(rtype)
        patient = principal.require("u", rtype, rid=rid)
        if not ID_RE.match(rid):
            msg = f"'{rid}' is not a valid FHIR id (1-64 characters of A-Z a-z 0-9 - .)"
            raise BadRequest(msg, issues=[Issue(code="value", diagnostics=msg, expression=(f"{rtype}.id",))])
        validate_resource(resource, expected_type=rtype, expected_id=rid)
        if patient is not None:  # the new version and the one it replaces must both be the patient's
            _keep_body_to_compartment(patient, resource)
            current = await self.store.current(rtype, rid)
            if current is not None:
                _keep_to_compartment(patient, current)
        return await self._write(rtype=rtype, rid=rid, resource=resource, method="PUT", expected=if_match,
                                 principal=principal)

    async def conditional_update(self, *, principal: Principal, rtype: str, criteria_text: str, resource: Any,
                                 if_match: int | None = None) -> WriteResult:
        criteria = self._conditional_criteria(principal, rtype, "u", criteria_text, "Conditional update")
        validate_resource(resource, expected_type=rtype)
        body_id = resource.get("id")

        async def write(matched: Version | None) -> WriteResult:
            if matched is None:
                principal.require("c", rtype)
                rid = body_id if isinstance(body_id, str) else new_id()
                return await self._write(rtype=rtype, rid=rid, resource=resource, method="PUT", expected=if_match,
                                         principal=principal)
            if body_id is not None and body_id != matched.rid:
                raise BadRequest(f"The body's id '{body_id}' is not the id of the matched resource '{matched.rid}'")
            return await self._write(rtype=rtype, rid=matched.rid, resource=resource, method="PUT",
                                     expected=matched.vid if if_match is None else if_match, principal=principal)

        return await self._on_the_match(criteria, rtype, write, resource=resource, if_match=if_match)

    async def conditional_patch(self, *, principal: Principal, rtype: str, criteria_text: str, patch: Any,
                                if_match: int | None = None) -> WriteResult:
        """``PATCH [type]?criteria``: the one match patched (none: 404, several: 412)."""
        criteria = self._conditional_criteria(principal, rtype, "u", criteria_text, "Conditional patch")

        async def write(matched: Version | None) -> WriteResult:
            if matched is None:
                raise NotFound(f"The criteria matched no {rtype} to patch")
            return await self.patch(principal=principal, rtype=rtype, rid=matched.rid, patch=patch,
                                    if_match=matched.vid if if_match is None else if_match)

        return await self._on_the_match(criteria, rtype, write, if_match=if_match)

    async def patch(self, *, principal: Principal, rtype: str, rid: str, patch: Any,
                    if_match: int | None = None) -> WriteResult:
        """A JSON Patch (a list of operations) or a FHIRPath Patch (a Parameters resource) applied to the current
        version, validated, stored as the next version."""
        require_supported_type(rtype)
        principal.require("u", rtype, rid=rid)
        async for _ in self.attempts():
            current = await self.read(principal=principal, rtype=rtype, rid=rid, with_index=True)
            if if_match is not None and current.vid != if_match:
                raise PreconditionFailed(f"{rtype}/{rid} is at version {current.vid}, not {if_match}",
                                         headers={"ETag": etag(current.vid)})
            assert current.body is not None
            patched = apply_patch(current.body, patch, rtype=rtype, rid=rid)
            validate_resource(patched, expected_type=rtype, expected_id=rid)
            _keep_body_to_compartment(principal.require("u", rtype, rid=rid), patched)
            try:
                return await self._write_once(rtype=rtype, rid=rid, resource=patched, method="PATCH",
                                              base=current)
            except VersionConflict:
                if if_match is not None:
                    raise PreconditionFailed(f"{rtype}/{rid} was changed concurrently") from None
                continue
        raise Conflict(f"{rtype}/{rid} is being changed by too many writers; try again")

    async def delete(self, *, principal: Principal, rtype: str, rid: str,
                     if_match: int | None = None) -> WriteResult | None:
        """Delete as a tombstone version; None if there was nothing to delete (already deleted)."""
        require_supported_type(rtype)
        patient = principal.require("d", rtype, rid=rid)
        async for _ in self.attempts():
            current = await self.store.current(rtype, rid) if ID_RE.match(rid) else None
            if current is None:
                raise NotFound(f"{rtype}/{rid} is not known")
            _keep_to_compartment(patient, current)
            if if_match is not None and current.vid != if_match:
                raise PreconditionFailed(f"{rtype}/{rid} is at version {current.vid}, not {if_match}")
            if current.deleted:
                return None
            try:
                return await self._write_once(rtype=rtype, rid=rid, resource=None, method="DELETE", base=current)
            except VersionConflict:
                if if_match is not None:
                    raise PreconditionFailed(f"{rtype}/{rid} was changed concurrently") from None
                continue
        raise Conflict(f"{rtype}/{rid} is being changed by too many writers; try again")

    async def conditional_delete(self, *, principal: Principal, rtype: str, criteria_text: str) -> WriteResult | None:
        criteria = self._conditional_criteria(principal, rtype, "d", criteria_text, "Conditional delete")

        async def write(matched: Version | None) -> WriteResult | None:
            if matched is None:
                return None
            return await self.delete(principal=principal, rtype=rtype, rid=matched.rid, if_match=matched.vid)

        return await self._on_the_match(criteria, rtype, write, if_match=None)

    def _conditional_criteria(self, principal: Principal, rtype: str, need: str, text: str, what: str) -> SearchQuery:
        """The criteria of a conditional write of ``rtype`` that needs ``need`` (u, d) and search on the type (not
        open to ``patient/`` scopes)."""
        require_supported_type(rtype)
        principal.require(need, rtype)
        _no_search_for_patient_scopes(principal.require("s", rtype), what)
        return self.criteria(principal, rtype, text)

    async def _on_the_match(self, criteria: SearchQuery, rtype: str,
                            write: Callable[[Version | None], Awaitable[_Written]], *,
                            resource: dict[str, Any] | None = None, if_match: int | None) -> _Written:
        """A conditional write (FHIR R4 http.html#cond-update, #patch, #cdelete): under the criteria's locks,
        ``write`` on their one match (None: none; several: 412), over the version that matched. Plain writes take
        no lock, so that version may be superseded before the write, perhaps by one the criteria no longer match:
        ``write`` then fails (412 or 410, as an If-Match would) and the criteria are matched again, unless the
        client gave its own If-Match."""
        async with self._guard(criteria, resource):
            async for _ in self.attempts():
                matches = await self.match(criteria, rtype)
                if len(matches) > 1:
                    raise PreconditionFailed(f"The criteria matched {len(matches)} {rtype} resources; be more "
                                             "specific")
                try:
                    return await write(matches[0] if matches else None)
                except (PreconditionFailed, Gone):
                    if if_match is not None:
                        raise
            raise Conflict(f"The {rtype} the criteria match is being changed by too many writers; try again")

    # ---- internals ------------------------------------------------------------------------------------

    def _guard(self, criteria: SearchQuery, resource: dict[str, Any] | None = None) -> Any:
        """Serialize match-then-write of conditional writes that could match one resource (HAPI #3141: racing
        creates duplicated): by their criteria and by the identifiers they name (``lock_names``)."""
        return _LockGuard(self.store, lock_names(criteria, resource))

    async def match(self, criteria: SearchQuery, rtype: str) -> list[Version]:
        """Current resources matching conditional criteria (at most two: enough to tell one from several)."""
        return await self.engine.matches(criteria, limit=2)

    async def _write(self, *, rtype: str, rid: str, resource: dict[str, Any], method: str, expected: int | None,
                     must_be_new: bool = False, principal: Principal | None = None) -> WriteResult:
        async for _ in self.attempts():
            current = None if must_be_new else await self.store.current(rtype, rid)
            if expected is not None and (current is None or current.vid != expected):
                # FHIR R4 http.html#concurrency: If-Match that does not hold -> 412
                at = "does not exist" if current is None else f"is at version {current.vid}"
                raise PreconditionFailed(f"{rtype}/{rid} {at}, not {expected}")
            if current is None and principal is not None and method == "PUT":
                principal.require("c", rtype)  # update-as-create needs create permission too
            try:
                return await self._write_once(rtype=rtype, rid=rid, resource=resource, method=method, base=current)
            except VersionConflict:
                if expected is not None or must_be_new:
                    raise PreconditionFailed(f"{rtype}/{rid} was changed concurrently") from None
                continue
        raise Conflict(f"{rtype}/{rid} is being changed by too many writers; try again")

    def new_version(self, *, rtype: str, rid: str, resource: dict[str, Any] | None, method: str,
                    base: Version | None) -> Version:
        """The version after ``base``: the resource as received with server-owned id and meta, and its index."""
        vid = 1 if base is None else base.vid + 1
        ts = now_micros()
        if resource is None:
            return Version(rtype=rtype, rid=rid, vid=vid, ts=ts, method=method, body=None)
        stamped = _stamp(resource, rid=rid, vid=vid, last_updated=instant(ts, self.settings))
        if rtype == "SearchParameter":
            _check_search_parameter(stamped)
        return Version(rtype=rtype, rid=rid, vid=vid, ts=ts, method=method, body=orjson.dumps(stamped),
                       index=self.index_for(stamped, vid=vid, base=base))

    def index_for(self, resource: dict[str, Any], *, vid: int, base: Version | None) -> tuple[str, ...]:
        """The ``ix`` items of version ``vid`` of ``resource``: each entry with the version that introduced it
        (the base's vid for entries the base has with the same marks, ``vid`` for the others) and its marks
        (``order_marks``: the sorts that pass over it)."""
        entries = entry_keys(resource, zone=self.settings.zone, base_url=self.settings.fhir_base)
        marks = order_marks(resource.get("resourceType", ""), entries)
        introduced = dict(split_item(item) for item in base.index) if base else {}
        items = []
        for entry in entries:
            mark = marks.get(entry, "")
            was = introduced.get(entry)
            items.append(entry + (was if was is not None and marks_of(was) == mark else f"{vid}{mark}"))
        return tuple(items)

    async def refresh_search_parameters(self) -> int:
        """Load the SearchParameter resources of the store as custom parameters; returns how many are usable.

        Called at start-up and every few seconds (for SearchParameters written by other processes); a
        write here updates its own entry at once (``search_parameter_written``). Each version is checked once."""
        seen: dict[str, tuple[int, dict[str, Any] | None]] = {}
        written: dict[str, Version] = {}
        self._written_during_refresh.append(written)
        try:
            after = None
            while True:
                batch = await self.store.scan_type("SearchParameter", after=after, limit=500)
                for version in batch:
                    if version.body is None:
                        continue
                    known = self._search_parameters.get(version.rid)
                    seen[version.rid] = known if known is not None and known[0] == version.vid else _usable(version)
                if len(batch) < 500:
                    break
                after = batch[-1].rid
        finally:
            self._written_during_refresh.remove(written)
        # a SearchParameter written here during the scan may be missing from it, or older in it: keep the write
        for rid, version in written.items():
            if rid not in seen or seen[rid][0] <= version.vid:
                seen.pop(rid, None)
                if version.body is not None:
                    seen[rid] = _usable(version)
        self._search_parameters = seen
        return self._apply_search_parameters()

    def search_parameter_written(self, version: Version) -> None:
        for written in self._written_during_refresh:
            written[version.rid] = version
        if version.body is None:
            self._search_parameters.pop(version.rid, None)
        else:
            self._search_parameters[version.rid] = _usable(version)
        self._apply_search_parameters()

    def _apply_search_parameters(self) -> int:
        usable = [sp for _, sp in self._search_parameters.values() if sp is not None]
        set_custom(usable)
        return len(usable)

    async def _write_once(self, *, rtype: str, rid: str, resource: dict[str, Any] | None, method: str,
                          base: Version | None) -> WriteResult:
        version = self.new_version(rtype=rtype, rid=rid, resource=resource, method=method, base=base)
        await self.store.write(version, base=base)
        if rtype == "SearchParameter":  # new writes index by it from now on (other processes: within seconds)
            self.search_parameter_written(version)
        return WriteResult(version, created=base is None or base.deleted)

    async def attempts(self) -> AsyncIterator[int]:
        """Attempts of a write that lost a race, until ``write_retry_seconds`` have passed.

        Writes without If-Match must not fail just because others write the same resource: a lost race
        is retried on the new current version, with exponential backoff and jitter.
        """
        deadline = time.monotonic() + self.settings.write_retry_seconds
        attempt = 0
        while True:
            yield attempt
            if time.monotonic() > deadline:
                return
            attempt += 1
            pause = min(0.002 * 2 ** min(attempt, 10), 0.05)
            await asyncio.sleep(random.uniform(pause / 2, pause))  # noqa: S311 - jitter, not security


def lock_names(criteria: SearchQuery, resource: dict[str, Any] | None) -> list[str]:
    """The locks a conditional write holds while it matches and writes (taken in name order):
    ``Type|identifier|<hex of value>`` for each identifier value its criteria search by (with or without a
    system) and each one of the resource it writes; ``Type|criteria`` when its criteria name no identifier value.
    Two conditional writes that could find or make one resource by an identifier are thereby serialized whatever
    the rest of their criteria (``identifier=urn:mrn|1``, ``identifier=1&gender=male``): the second finds what the
    first wrote; so are all those of one type whose criteria name no identifier (``family=王&birthdate=…`` and
    ``name=王&birthdate=…``), which cannot tell which resources they may find. What remains: such criteria
    against a write by identifier of a resource they match, when the former writes no identifier of it."""
    rtype = criteria.rtype
    names = set()
    for clause in criteria.clauses:
        if clause.name == "identifier" and clause.keys is not None and not clause.negate:
            for r in clause.keys.ranges:  # "identifier|<hex(value)>." then the system's hex; "identifier|": any
                if value := r.lo[len("identifier|"):].split(".", 1)[0]:
                    names.add(f"{rtype}|identifier|{value}")
    if not names:
        names.add(f"{rtype}|criteria")
    identifiers = resource.get("identifier") if isinstance(resource, dict) else None
    for identifier in identifiers if isinstance(identifiers, list) else []:
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
            names.add(f"{rtype}|identifier|{hexs(identifier['value'])}")
    return sorted(names)


class _LockGuard:
    """Holds the named lease locks (``ResourceStore.hold_locks``); one held elsewhere too long is a 409."""

    def __init__(self, store: ResourceStore, names: list[str]) -> None:
        self._cm = store.hold_locks(names)

    async def __aenter__(self) -> None:
        try:
            await self._cm.__aenter__()
        except LockBusy:
            raise Conflict("Another conditional write that could match the same resource is still running; "
                           "try again") from None

    async def __aexit__(self, *exc: object) -> None:
        await self._cm.__aexit__(*exc)  # type: ignore[arg-type]


def _keep_to_compartment(patient: str | None, version: Version) -> None:
    """With patient/ scopes (``patient`` set), refuse a stored resource outside that patient's compartment."""
    if patient is None:
        return
    if version.body is None or not in_patient_compartment(orjson.loads(version.body), patient):
        raise Forbidden(f"{version.key} is not in the compartment of the token's patient")


def _check_search_parameter(sp: dict[str, Any]) -> None:
    """Refuse a SearchParameter whose expression is not FHIRPath. One the hub cannot index (special, or without
    an expression) is stored but not used for search (``usable_search_parameter``), and one whose code no search
    URL or index key can hold is refused (``registry.CODE_RE``)."""
    code = sp.get("code")
    if isinstance(code, str) and not CODE_RE.fullmatch(code):
        msg = (f"SearchParameter.code '{code}' cannot name a search parameter: use letters, digits, '-' and '_' (in a "
               "search, '.' chains, ':' takes a modifier, ',' and '|' separate values)")
        where = ("SearchParameter.code",)
        raise UnprocessableEntity(msg, issues=[Issue(code="invalid", diagnostics=msg, expression=where)])
    expression = sp.get("expression")
    if not isinstance(expression, str):
        return
    try:
        check_syntax(expression)
    except ValueError as exc:
        raise UnprocessableEntity(str(exc), issues=[Issue(code="invalid", diagnostics=str(exc),
                                                          expression=("SearchParameter.expression",))]) from None


def _usable(version: Version) -> tuple[int, dict[str, Any] | None]:
    """A SearchParameter version as the cache keeps it: its vid, and the resource if the hub can index by it."""
    sp = orjson.loads(version.body or b"{}")
    return version.vid, sp if usable_search_parameter(sp) else None


def usable_search_parameter(sp: dict[str, Any]) -> bool:
    """Can the hub index by this SearchParameter (active or draft, a type it indexes, valid FHIRPath)?"""
    if sp.get("type") not in MODIFIERS or not isinstance(sp.get("expression"), str):
        return False
    try:
        _check_search_parameter(sp)
    except HubError:
        return False
    return True


def _readable(principal: Principal, version: Version) -> bool:
    """May ``principal`` see ``version`` (an included resource)? Its type must be readable, and with patient/
    scopes it must be in the patient's compartment."""
    try:
        patient = principal.require("r", version.rtype, rid=version.rid)
        _keep_to_compartment(patient, version)
    except Forbidden:
        return False
    return True


def _keep_body_to_compartment(patient: str | None, resource: dict[str, Any]) -> None:
    if patient is not None and not in_patient_compartment(resource, patient):
        raise Forbidden("With patient/ scopes a resource must belong to the token's patient (its subject or "
                        "patient reference must be that Patient)")


def require_search(principal: Principal, query: SearchQuery) -> str | None:
    """Check that ``principal`` may search ``query``'s type and the types its chains and ``_has`` reach: their
    criteria tell about those resources (``Patient?_has:Observation:subject:code=…`` says who has such an
    Observation). A chain over several target types keeps those the principal may search (``subject.name=王``
    with Patient search only: Patients), and is refused when none is left. Returns the patient restriction of
    the query's own type (``Principal.require``)."""
    patient = principal.require("s", query.rtype)
    for clause in query.clauses:
        if clause.has is not None:
            require_search(principal, clause.has.query)
        if clause.chain is not None:
            allowed = []
            for sub in clause.chain.queries:
                try:
                    require_search(principal, sub)
                except Forbidden:
                    if len(clause.chain.queries) == 1:
                        raise
                    continue
                allowed.append(sub)
            if not allowed:
                raise Forbidden(f"The token's scopes do not allow search on any target type of {clause.name}")
            clause.chain.queries[:] = allowed
    return patient


def _no_search_for_patient_scopes(patient: str | None, what: str) -> None:
    if patient is not None:
        raise Forbidden(f"{what} is not available to patient/ scopes yet: it needs search within the compartment")


def _stamp(resource: dict[str, Any], *, rid: str, vid: int, last_updated: str) -> dict[str, Any]:
    """The resource as received with the server-owned ``id`` and ``meta.versionId``/``lastUpdated`` set."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(vid)
    meta["lastUpdated"] = last_updated
    out: dict[str, Any] = {"resourceType": resource["resourceType"], "id": rid, "meta": meta}
    for key, value in resource.items():
        if key not in out:
            out[key] = value
    return out
