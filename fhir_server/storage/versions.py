"""Versioned resource storage on the MongoDB wire protocol (MongoDB, or FerretDB without transactions).

Two collections:

- ``resources``: the current version of each resource, ``_id`` = ``Type/id``, with its search index
  entries. A read is one lookup by ``_id``; a create is one insert (the unique ``_id`` refuses a second).
- ``history``: the versions that were current before, ``_id`` = ``Type/id/vid``, each a faithful copy of a
  committed version. Superseding version n starts by inserting the copy of n: that insert is the write
  lock (DESIGN.md, lessons from Spark), because the copy of n can be inserted once only. The writer that
  inserted it then replaces ``resources`` with n+1: the one step at which n+1 becomes visible.

A process killed after the copy and before the replace leaves ``resources`` at n and a copy of n: every
visible version is still a committed one. The copy is a *claim* that blocks the next writer of that
resource until it is released: by the same hub instance at once (it knows the claim is not one of its
own writes in flight: after a restart, or after a failed write), by any instance after the lease.

Search index: ``search_index`` holds one document per index entry of a current version, ``_id`` =
``Type|param|enc|rid|vid`` (see ``fhir_server.search.keys``), where ``vid`` is the version that introduced the
entry (followed by the marks of the sorts that pass over it, ``search.index_order.order_marks``: an entry whose
marks change is a new entry); the version document lists its entries (``ix``, one string of ``param|enc|vid``
items). A write inserts
the entries its new version introduces *before* the version becomes visible, and deletes the entries its new
version dropped *after*: an entry of a current version is never missing. Because the key carries the
introducing vid, no writer ever deletes an entry another version relies on; what a crash or a lost race leaves
behind is an orphan that matches no current ``ix`` and is skipped by every search.

Only filters on ``_id`` alone are used on hot paths: FerretDB's SQLite backend pushes down nothing else
(with the hub's patch: ``_id`` equality, ranges and ``$in``, ordered and limited by ``_id``).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from bson import Binary
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from fhir_server.storage.batching import (
    DeleteBatcher,
    FindBatcher,
    InsertBatcher,
    ReplaceBatcher,
    ScanBatcher,
    id_ordered,
)

__all__ = ["HistoryPage", "LockBusy", "ResourceStore", "Version", "VersionConflict", "history_key", "index_key",
           "items_starting", "now_micros", "split_index_key", "split_item", "substring_pattern"]

_last_ts = 0


def now_micros() -> int:
    """Wall-clock microseconds, strictly increasing within this process (a cursor key for history)."""
    global _last_ts
    ts = time.time_ns() // 1000
    if ts <= _last_ts:
        ts = _last_ts + 1
    _last_ts = ts
    return ts


class VersionConflict(Exception):
    """Another writer superseded the version this write was based on."""


class LockBusy(Exception):
    """A conditional-operation lock is held by another writer longer than we wait."""


@dataclass(frozen=True, slots=True)
class Version:
    """One stored version. ``body`` is the resource JSON exactly as served (None for a deletion)."""

    rtype: str
    rid: str
    vid: int
    ts: int
    method: str  # POST | PUT | PATCH | DELETE, for history entries (FHIR R4 Bundle.entry.request)
    body: bytes | None
    index: tuple[str, ...] = ()  # search index entries, each ``param|enc|vid`` (vid: the version that added it), sorted

    @property
    def deleted(self) -> bool:
        return self.body is None

    @property
    def key(self) -> str:
        return f"{self.rtype}/{self.rid}"

    @property
    def version_key(self) -> str:
        return f"{self.rtype}/{self.rid}/{self.vid}"

    def _fields(self) -> dict[str, Any]:
        return {"t": self.rtype, "i": self.rid, "v": self.vid, "ts": self.ts, "m": self.method,
                "j": None if self.body is None else Binary(self.body)}


def _from_doc(doc: dict[str, Any], *, with_index: bool = False) -> Version:
    body = doc.get("j")
    ix = doc.get("ix") if with_index else None
    # sorted, as ``index_for`` writes them (a store written otherwise costs the sort): ``items_starting`` bisects
    index = tuple(sorted(ix.split(" ") if isinstance(ix, str) and ix else ix if isinstance(ix, list) else ()))
    return Version(rtype=doc["t"], rid=doc["i"], vid=int(doc["v"]), ts=int(doc["ts"]), method=doc.get("m", "PUT"),
                   body=None if body is None else bytes(body), index=index)


def _ix(index: tuple[str, ...]) -> str:
    """``ix`` as stored: one space-separated string (entries have no spaces). FerretDB reads a string field
    in a fraction of the time an array of strings takes: fetching 28 Patients by ``$in`` took 3.5 ms instead
    of 7.8 ms."""
    return " ".join(index)


def items_starting(index: tuple[str, ...], prefix: str) -> tuple[str, ...]:
    """The items of a version's ``index`` that start with ``prefix`` (``param|``: a parameter's), found by
    bisection: a version's items are sorted (``_from_doc``; the service makes them from sorted entries)."""
    start = end = bisect.bisect_left(index, prefix)
    while end < len(index) and index[end].startswith(prefix):
        end += 1
    return index[start:end]


def split_item(item: str) -> tuple[str, str]:
    """An ``ix`` item (``param|enc|vid``) as its entry (``param|enc|``) and the vid that introduced it."""
    cut = item.rindex("|") + 1
    return item[:cut], item[cut:]


def _family(rtype: str, low: str) -> str:
    """The type and parameter of a scan of the search index from ``low`` (``ScanBatcher`` learns per family)."""
    return f"{rtype}|{low.split('|', 1)[0]}|"


def index_key(rtype: str, rid: str, item: str) -> str:
    """The ``search_index`` key of one ``ix`` item (``param|enc|vid``) of resource ``rtype/rid``."""
    entry, vid = split_item(item)
    return f"{rtype}|{entry}{rid}|{vid}"


def substring_pattern(texts: tuple[str, ...]) -> str:
    """The ``$regex`` of keys containing one of ``texts`` (``scan_index``'s ``containing``). The hub's FerretDB
    patch ``ferretdb-sqlite-id-substring`` tests it on the ``_id`` index only when the texts hold letters, digits,
    ``_``, ``.``, ``|`` and ``-`` alone (escaped here as it expects); with any other character the store reads
    the whole collection."""
    return "|".join(re.escape(text) for text in texts)


def split_index_key(key: str) -> tuple[str, str]:
    """A ``search_index`` key (``Type|param|enc|rid|vid``) as its entry (``param|enc|``) and resource id."""
    entry, rid, _vid = key.split("|", 1)[1].rsplit("|", 2)
    return entry + "|", rid


def _index_docs(version: Version, base: Version | None) -> list[dict[str, Any]]:
    known = set(base.index) if base is not None else set()
    return [{"_id": index_key(version.rtype, version.rid, item)} for item in version.index if item not in known]


def _dropped_keys(version: Version, base: Version | None) -> list[str]:
    if base is None:
        return []
    kept = set(version.index)
    return [index_key(base.rtype, base.rid, item) for item in base.index if item not in kept]


_HISTORY_KEYS_COMPLETE = "!history-keys-complete"  # in ``search_index``: every version has its history keys


def history_key(scope: str, ts: int, version_key: str) -> str:
    """The history key of a version (``Type/id/vid``) written at ``ts`` (µs), in ``search_index``: ``scope`` is
    its type, or ``*`` for the system-wide order. ``@history`` is no parameter code; fixed-width hex, so keys
    sort by time, then by version key."""
    return f"{scope}|@history|{ts:016x}|{version_key}"


def _history_docs(versions: list[tuple[str, int, str]]) -> list[dict[str, Any]]:
    """Both history keys (type and system order) of each ``(type, ts, version key)``."""
    return [{"_id": history_key(scope, ts, key)} for rtype, ts, key in versions for scope in (rtype, "*")]


@dataclass(frozen=True, slots=True)
class HistoryPage:
    versions: list[Version]
    next_cursor: tuple[int, str] | None


class ResourceStore:
    """The only code that reads or writes resource documents."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]], *, lease_seconds: float = 120.0,
                 owner: str = "hub") -> None:
        self.db = db
        self.owner = owner
        self.resources: AsyncCollection[dict[str, Any]] = db["resources"]
        self.history: AsyncCollection[dict[str, Any]] = db["history"]
        self.locks: AsyncCollection[dict[str, Any]] = db["locks"]
        self.journal: AsyncCollection[dict[str, Any]] = db["journal"]
        self.search_index: AsyncCollection[dict[str, Any]] = db["search_index"]
        self._index_inserts = InsertBatcher(self.search_index)
        self._index_deletes = DeleteBatcher(self.search_index)
        self._index_reads = FindBatcher(self.search_index)
        self._creates = InsertBatcher(self.resources)
        self._claims = InsertBatcher(self.history)
        self._releases = DeleteBatcher(self.history)
        self._reads = FindBatcher(self.resources)
        self._history_reads = FindBatcher(self.history)
        self._scans = ScanBatcher(self.search_index)
        self._scans_back = ScanBatcher(self.search_index, backward=True)
        self._replaces = ReplaceBatcher(self.resources)
        self._history_keys_complete = False  # once true, stays true: type and system history read the keys
        self._leaves_out: bool | None = None  # whether the store reads a range that leaves out keys by its index
        self.lease_micros = int(lease_seconds * 1_000_000)
        self._in_flight: set[str] = set()  # claims this process holds right now
        # the lease locks (``lock``) this process holds or waits for: its waiters queue here, first come first
        # served, and only the first polls the store; (lock, waiters)
        self._lock_queues: dict[str, tuple[asyncio.Lock, int]] = {}
        # awaited with the versions whose index entries are about to be inserted, before any of them is (a write,
        # a transaction, a re-index): what the search layer keeps about the entries in the store must cover them
        # first (search/date_spans.py)
        self.before_entries: Callable[[Sequence[Version]], Awaitable[None]] | None = None

    async def ensure_indexes(self) -> None:
        """Create the indexes the hub needs; idempotent (same name and keys each start). ``resources`` and
        ``history`` need none besides ``_id`` (see ``_drop_scan_indexes``)."""
        await self.locks.create_index([("o", ASCENDING)], name="owner")
        await self.journal.create_index([("o", ASCENDING)], name="owner")

    # ---- reads -------------------------------------------------------------------------------------------

    async def current(self, rtype: str, rid: str, *, with_index: bool = True) -> Version | None:
        """The current version with its index entries (a write's base needs them: its claim copy is what a
        rollback restores, and they say which entries the next version drops); reads pass ``with_index=False``."""
        key = f"{rtype}/{rid}"
        doc = (await self._reads.find([key])).get(key)
        return None if doc is None else _from_doc(doc, with_index=with_index)

    async def version(self, rtype: str, rid: str, vid: int) -> Version | None:
        doc = await self.history.find_one({"_id": f"{rtype}/{rid}/{vid}"})
        if doc is not None:
            return _from_doc(doc)  # every copy in history is a committed version
        current = await self.current(rtype, rid, with_index=False)
        return current if current is not None and current.vid == vid else None

    async def current_many(self, rtype: str, rids: list[str]) -> dict[str, Version]:
        """Current versions (with their index entries) of the given ids of one type, by id; one round trip (often
        shared with other requests', see ``FindBatcher``)."""
        return {rid: version for (_, rid), version in (await self.current_of_types([(rtype, r) for r in rids])).items()}

    async def any_resource(self) -> bool:
        """Whether the store holds any resource (current or deleted): one ``_id`` range read of one key."""
        return bool(await id_ordered(self.resources, {"_id": {"$gte": "A", "$lt": "["}}, backward=False, limit=1,
                                     projection={"_id": 1}))

    async def scan_type(self, rtype: str, *, after: str | None, limit: int, backward: bool = False) -> list[Version]:
        """Versions of one type (deleted ones too) in id order after id ``after`` (``backward``: in reverse order
        before it): an ``_id`` range scan."""
        if backward:
            bounds = {"$gte": f"{rtype}/", "$lt": f"{rtype}/{after}" if after is not None else f"{rtype}0"}
        else:
            bounds = {"$gt": f"{rtype}/{after}"} if after is not None else {"$gte": f"{rtype}/"}
            bounds["$lt"] = f"{rtype}0"
        return [_from_doc(d, with_index=True)
                for d in await id_ordered(self.resources, {"_id": bounds}, backward=backward, limit=limit)]

    async def scan_index(self, rtype: str, low: str, high: str, *, after: str | None, limit: int,
                         backward: bool = False, containing: tuple[str, ...] = (), without: str = "") -> list[str]:
        """Keys of ``search_index`` from ``rtype|low`` (inclusive) to ``rtype|high`` (exclusive), in key order
        after the key ``after`` (``backward``: in reverse order before it); with ``containing``, only keys that
        contain one of those texts (a ``$regex`` of literals, which the hub's FerretDB patch
        ``ferretdb-sqlite-id-substring`` tests on the ``_id`` index); with ``without``, only keys that do not
        contain that text (``$not`` of it: ``ferretdb-sqlite-id-without-substring``; ask ``leaves_out_in_index``
        first). Scans of concurrent requests share commands (``ScanBatcher``)."""
        bounds: dict[str, Any] = {"$gte": f"{rtype}|{low}", "$lt": f"{rtype}|{high}"}
        if after is not None and backward and after < bounds["$lt"]:
            bounds["$lt"] = after
        elif after is not None and not backward and after >= bounds["$gte"]:
            del bounds["$gte"]
            bounds["$gt"] = after
        if containing and all(containing):
            bounds["$regex"] = substring_pattern(containing)
        if without:
            bounds["$not"] = {"$regex": re.escape(without)}
        batcher = self._scans_back if backward else self._scans
        return await batcher.scan(bounds, limit, family=_family(rtype, low))

    async def scan_index_many(self, ranges: list[tuple[str, str, str]], *, limit: int) -> list[list[str]]:
        """``scan_index`` of each (type, low, high) at once, forward, unfiltered, the first ``limit`` keys of each:
        their scans share commands as concurrent ones do, without a task each."""
        return await self._scans.scan_many([({"$gte": f"{rtype}|{low}", "$lt": f"{rtype}|{high}"}, _family(rtype, low))
                                            for rtype, low, high in ranges], limit)

    async def current_of_types(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Version]:
        """``current_many`` of (type, id) pairs of several types at once (one round trip per 500)."""
        found: dict[tuple[str, str], Version] = {}
        for start in range(0, len(keys), 500):
            docs = await self._reads.find([f"{rtype}/{rid}" for rtype, rid in keys[start:start + 500]])
            for doc in docs.values():
                version = _from_doc(doc, with_index=True)
                found[(version.rtype, version.rid)] = version
        return found

    async def leaves_out_in_index(self) -> bool:
        """Whether the store reads an ``_id`` range that leaves out the keys containing a text (``scan_index``'s
        ``without``) by the ``_id`` index. Asked once, by explaining such a find: a FerretDB without the hub's
        patch ``ferretdb-sqlite-id-without-substring`` would read the whole table (MongoDB uses the index)."""
        if self._leaves_out is None:
            probe = {"_id": {"$gte": "~|", "$lt": "~|~", "$not": {"$regex": re.escape("^a")}}}
            try:
                plan = await self.db.command("explain", {"find": self.search_index.name, "filter": probe,
                                                         "sort": {"_id": 1}, "limit": 1})
            except OperationFailure:
                plan = {}
            if "filterPushdown" in plan:  # FerretDB: SQLite's plan
                self._leaves_out = plan["filterPushdown"] is True and "USING INDEX" in str(plan.get("queryPlanner"))
            else:
                self._leaves_out = "IXSCAN" in str(plan.get("queryPlanner"))
        return self._leaves_out

    async def instance_history(
        self, *, current: Version, since: int | None, at: int | None, count: int, before_vid: int | None,
    ) -> tuple[list[Version], int | None]:
        """Versions of the resource whose current version is ``current``, newest first, each fetched by
        ``_id`` (cheap on every engine). Returns the page and the vid to continue below (None when done).
        """
        rtype, rid = current.rtype, current.rid
        top = current.vid if before_vid is None else min(current.vid, before_vid - 1)
        out: list[Version] = []
        vid = top
        while vid >= 1 and len(out) < count:
            batch = list(range(vid, max(vid - count, 0), -1))
            found = await asyncio.gather(*(self._historic(rtype, rid, v, current) for v in batch))
            for version in found:
                vid -= 1
                if version is None:
                    continue
                if since is not None and version.ts < since:
                    return out, None
                if at is not None:
                    if version.ts > at:
                        continue
                    return [version], None  # FHIR R4 http.html#history: _at = the version current then
                out.append(version)
                if len(out) == count:
                    break
        return out, (out[-1].vid if out and vid >= 1 else None)

    async def _historic(self, rtype: str, rid: str, vid: int, current: Version) -> Version | None:
        if vid == current.vid:
            return current
        doc = await self.history.find_one({"_id": f"{rtype}/{rid}/{vid}"})
        return None if doc is None else _from_doc(doc)

    async def history_page(self, *, rtype: str | None, since: int | None, at: int | None, count: int,
                           cursor: tuple[int, str] | None) -> HistoryPage:
        """Versions of a type (or of all types), newest first, after ``cursor`` (``(ts, Type/id/vid)`` of the
        last version of the page before); equal timestamps by version key, descending.

        ``at``: only versions that were current at that instant (FHIR R4 http.html#history): a superseded
        version qualifies if it was written by then and superseded (``u``) after it.

        From the history keys once every version has them (``backfill_history_keys``): a page costs a range
        of keys and one read of each version, at any depth and any store size. Until then (a store written by
        an older hub) by merging ``resources`` and ``history`` sorted by ``ts``: indexed on MongoDB, a scan of
        both collections on FerretDB.
        """
        if await self.history_keys_complete():
            return await self._history_from_keys(rtype=rtype, since=since, at=at, count=count, cursor=cursor)
        return await self._history_scan(rtype=rtype, since=since, at=at, count=count, cursor=cursor)

    async def _history_from_keys(self, *, rtype: str | None, since: int | None, at: int | None, count: int,
                                 cursor: tuple[int, str] | None) -> HistoryPage:
        scope = rtype or "*"
        family = f"{scope}|@history|"
        bounds = {"$gte": f"{family}{since:016x}|" if since is not None else family,
                  "$lt": f"{family}{at + 1:016x}|" if at is not None else f"{scope}|@history}}"}
        if cursor is not None:
            bounds["$lt"] = min(bounds["$lt"], history_key(scope, cursor[0], cursor[1]))
        out: list[Version] = []
        batch = count + 1
        while len(out) <= count:
            keys = await self._scans_back.scan(bounds, batch, family=family)
            named = [(int(ts, 16), key) for ts, key in (k.split("|", 3)[2:] for k in keys)]
            found = await self._versions_named(named, at=at)
            out += [v for v in (found.get(n) for n in named) if v is not None][:count + 1 - len(out)]
            if len(keys) < batch:
                break
            bounds["$lt"] = keys[-1]
            batch = min(batch * 2, 1000)
        if len(out) > count:
            last = out[count - 1]
            return HistoryPage(out[:count], (last.ts, last.version_key))
        return HistoryPage(out, None)

    async def _versions_named(self, named: list[tuple[int, str]], *, at: int | None) -> dict[tuple[int, str], Version]:
        """The versions that ``(ts, Type/id/vid)`` keys name, from ``resources`` (current) or ``history``
        (superseded); a key whose version does not exist with that timestamp (a write that failed or was
        undone) names none. With ``at``: superseded versions only if superseded after ``at``."""
        if not named:
            return {}
        current_keys = sorted({key.rsplit("/", 1)[0] for _, key in named})
        currents, by_key = await asyncio.gather(self._reads.find(current_keys),
                                                self._history_reads.find([key for _, key in named]))
        out: dict[tuple[int, str], Version] = {}
        for ts, key in named:
            rid_key, _, vid = key.rpartition("/")
            doc = currents.get(rid_key)
            if doc is not None and int(doc["v"]) == int(vid) and int(doc["ts"]) == ts:
                out[(ts, key)] = _from_doc(doc)
                continue
            doc = by_key.get(key)
            if doc is not None and int(doc["ts"]) == ts and (at is None or int(doc.get("u", 0)) > at):
                out[(ts, key)] = _from_doc(doc)
        return out

    async def history_keys_complete(self) -> bool:
        """Whether every version has its history keys (``backfill_history_keys`` has run to its end)."""
        if not self._history_keys_complete:
            marker = await self.search_index.find_one({"_id": _HISTORY_KEYS_COMPLETE})
            self._history_keys_complete = marker is not None
        return self._history_keys_complete

    async def backfill_history_keys(self) -> int:
        """Give every stored version its history keys, mark the store complete, and drop the timestamp indexes
        the older way of reading needed; returns how many versions were read. Idempotent and safe beside
        writers (they add their own keys; a key that exists is fine). A store created by this hub has nothing
        to add: the first start marks it at once."""
        seen = 0
        if not await self.history_keys_complete():
            for collection in (self.resources, self.history):
                bounds: dict[str, str] = {"$gte": ""}
                while True:
                    docs = await id_ordered(collection, {"_id": bounds}, backward=False, limit=1000,
                                            projection={"t": 1, "i": 1, "v": 1, "ts": 1})
                    if not docs:
                        break
                    seen += len(docs)
                    await self._index_inserts.insert(_history_docs(
                        [(d["t"], int(d["ts"]), f"{d['t']}/{d['i']}/{int(d['v'])}") for d in docs]))
                    bounds = {"$gt": docs[-1]["_id"]}
            try:
                await self.search_index.insert_one({"_id": _HISTORY_KEYS_COMPLETE})
            except DuplicateKeyError:
                pass  # another instance finished first
            self._history_keys_complete = True
        await self._drop_scan_indexes()
        return seen

    async def _drop_scan_indexes(self) -> None:
        """Drop the ``t_ts`` and ``ts`` indexes that hubs before history keys created on ``resources`` and
        ``history`` for ``_history_scan``. With the keys nothing reads by them, and they cost every write: on
        FerretDB's SQLite backend each is an expression over the whole stored JSON, re-parsed on every insert
        and replace (without them FerretDB spent ~40 % less CPU per create here)."""
        for collection in (self.resources, self.history):
            present = await collection.index_information()
            for name in ("t_ts", "ts"):
                if name in present:
                    try:
                        await collection.drop_index(name)
                    except OperationFailure as exc:
                        if exc.code != 27:  # IndexNotFound: another instance dropped it first
                            raise

    async def _history_scan(self, *, rtype: str | None, since: int | None, at: int | None, count: int,
                            cursor: tuple[int, str] | None) -> HistoryPage:
        query: dict[str, Any] = {}
        if rtype is not None:
            query["t"] = rtype
        ts_range: dict[str, int] = {}
        if since is not None:
            ts_range["$gte"] = since
        if at is not None:
            ts_range["$lte"] = at
        if cursor is not None:
            ts_range["$lte"] = min(cursor[0], ts_range.get("$lte", cursor[0]))
        if ts_range:
            query["ts"] = ts_range
        superseded = {**query, "u": {"$gt": at}} if at is not None else query
        sort = [("ts", DESCENDING)]
        streams = [self.resources.find(query, {"ix": 0}).sort(sort), self.history.find(superseded).sort(sort)]
        heads: list[Version | None] = [await _next(s) for s in streams]
        out: list[Version] = []
        last_key: tuple[int, str] | None = None
        try:
            while len(out) <= count and any(h is not None for h in heads):
                # newest first; equal timestamps by key, descending, so the cursor (ts, key) is a total order
                i = max((i for i, h in enumerate(heads) if h is not None),
                        key=lambda i: (heads[i].ts, heads[i].version_key))  # type: ignore[union-attr]
                version = heads[i]
                assert version is not None
                heads[i] = await _next(streams[i])
                key = (version.ts, version.version_key)
                if cursor is not None and key >= cursor:
                    continue
                if key == last_key:  # a claim's copy of the current version: the same version twice
                    continue
                last_key = key
                out.append(version)
        finally:
            for stream in streams:
                await stream.close()
        if len(out) > count:
            last = out[count - 1]
            return HistoryPage(out[:count], (last.ts, last.version_key))
        return HistoryPage(out, None)

    # ---- writes ------------------------------------------------------------------------------------------

    async def write(self, new: Version, *, base: Version | None) -> Version:
        """Store ``new`` as the version after ``base`` (None: the resource does not exist yet).

        Raises VersionConflict if another writer got there first.
        """
        if base is None:
            await self._add_entries(_index_docs(new, None), [new])
            refused = await self._creates.insert([{"_id": new.key, **new._fields(), "ix": _ix(new.index)}])
            if refused:  # the unique _id: someone else created it first
                raise VersionConflict(f"{new.key} was created concurrently")
            return new
        await self._hold(base, until=new.ts)
        try:
            await self._add_entries(_index_docs(new, base), [new])
            await self._replaces.replace(new.key, {**new._fields(), "ix": _ix(new.index)})
        finally:
            self._in_flight.discard(base.version_key)
        await self._drop_entries(_dropped_keys(new, base))
        return new

    async def reindex(self, current: Version, index: tuple[str, ...]) -> bool:
        """Give the current version ``current`` the index entries ``index`` without a new version ($reindex).

        The entries' documents that are missing are found first (one read); when none is and ``index`` is the
        version's own, there is nothing to write. Otherwise, under the same claim as a write (no writer can
        commit meanwhile), the missing documents are inserted (new entries, and any lost), the version document
        replaced with the same version and new ``ix``, the claim released, dropped entries deleted. False if a
        writer holds the resource (its write indexes anew). Inserting only what is missing matters: FerretDB
        answers a batch with a duplicate by inserting each document in a transaction of its own (an unchanged
        resource took 5 ms of its CPU).
        """
        new = dataclasses.replace(current, index=index)
        if self.before_entries is not None:  # also when nothing is written: an upgrade's job covers every resource
            await self.before_entries([new])
        keys = [index_key(new.rtype, new.rid, item) for item in index]
        present = await self._index_reads.find(keys)  # with those of the other resources re-indexed at once
        missing = [k for k in keys if k not in present]
        if not missing and set(index) == set(current.index):
            return True
        try:
            await self._hold(current, until=current.ts)
        except VersionConflict:
            return False
        try:
            await self._add_entries([{"_id": k} for k in missing], [])
            await self._replaces.replace(new.key, {**new._fields(), "ix": _ix(index)})
        finally:
            await asyncio.shield(self._release([(new, current)]))
        await self._drop_entries(_dropped_keys(new, current))
        return True

    async def _add_entries(self, docs: list[dict[str, Any]], versions: list[Version]) -> None:
        """Insert index documents and the history keys of new ``versions``, before the versions are visible;
        one that exists already (an orphan of a lost race, same meaning) is fine, and so is an orphan history
        key: history checks each key against the version it names."""
        if versions and self.before_entries is not None:
            await self.before_entries(versions)
        docs = docs + _history_docs([(v.rtype, v.ts, v.version_key) for v in versions])
        await self._index_inserts.insert(docs)  # with the entries of concurrent writes: one store command

    async def _drop_entries(self, keys: list[str]) -> None:
        """Delete index documents of entries a committed version dropped (best effort: orphans are harmless)."""
        await self._index_deletes.delete(keys)

    async def _hold(self, base: Version, *, until: int) -> None:
        """Claim ``base`` and mark the claim in flight here; on failure nothing is held."""
        if base.version_key in self._in_flight:
            raise VersionConflict(f"{base.key} is being written by another request")
        self._in_flight.add(base.version_key)  # before the insert: a rival here must never see it as dead
        try:
            await self._claim(base, until=until)
        except BaseException:
            self._in_flight.discard(base.version_key)
            raise

    async def write_all(self, changes: list[tuple[Version, Version | None]]) -> None:
        """Store several new versions all or nothing (each ``(new, base)``, as for ``write``).

        Prepare: claim every base (in key order), so no other writer can touch these resources until we are
        done, and journal the changes; a claim we cannot get releases the ones we hold and raises
        VersionConflict. Commit: apply each change in the given order, consecutive creates in one ordered
        insert_many. If the store fails part-way, the applied changes are undone from the claim copies; if
        the process dies part-way, ``recover`` undoes them at the next start from the journal. Readers may
        see the changes appear during the commit phase (milliseconds); writers never interleave.
        """
        journal = await self._prepare_all(changes)
        applied: list[tuple[Version, Version | None]] = []
        try:
            await self._add_entries([d for new, base in changes for d in _index_docs(new, base)],
                                    [new for new, _ in changes])
            i = 0
            while i < len(changes):
                i += await self._apply_from(changes, i, applied)
        except BaseException:
            await asyncio.shield(self._undo(applied))
            await asyncio.shield(self._release([(n, b) for n, b in changes if b is not None]))
            await asyncio.shield(self.journal.delete_one({"_id": journal}))
            raise
        await self.journal.delete_one({"_id": journal})
        for _, base in changes:
            if base is not None:
                self._in_flight.discard(base.version_key)
        await self._drop_entries([k for new, base in changes for k in _dropped_keys(new, base)])

    async def _prepare_all(self, changes: list[tuple[Version, Version | None]]) -> str:
        """Claim every base and journal what is about to change; returns the journal's id."""
        claimed: list[tuple[Version, Version]] = []
        try:
            for new, base in sorted(((n, b) for n, b in changes if b is not None), key=lambda c: c[0].key):
                assert base is not None
                await self._hold(base, until=new.ts)
                claimed.append((new, base))
            journal = f"txn:{uuid.uuid4().hex}"
            await self.journal.insert_one({
                "_id": journal, "o": self.owner, "ts": now_micros(),
                # documents, not nested arrays: FerretDB 1.24 refuses arrays of arrays
                "changes": [{"k": n.key, "ts": n.ts, "b": None if b is None else b.vid} for n, b in changes]})
            return journal
        except BaseException:
            await self._release(claimed)
            raise

    async def _apply_from(self, changes: list[tuple[Version, Version | None]], i: int,
                          applied: list[tuple[Version, Version | None]]) -> int:
        """Apply ``changes[i]`` (or the run of creates starting there); returns how many were applied."""
        change, prior = changes[i]
        if prior is not None:
            await self.resources.replace_one({"_id": change.key}, {**change._fields(), "ix": _ix(change.index)})
            applied.append((change, prior))
            return 1
        run = [change]  # consecutive creates go in one insert_many: one round trip, one SQLite transaction
        while i + len(run) < len(changes) and changes[i + len(run)][1] is None:
            run.append(changes[i + len(run)][0])
        try:
            await self.resources.insert_many([{"_id": v.key, **v._fields(), "ix": _ix(v.index)} for v in run],
                                             ordered=True)
        except BulkWriteError as exc:
            inserted = int(exc.details.get("nInserted", 0))
            applied.extend((v, None) for v in run[:inserted])
            raise VersionConflict(f"{run[inserted].key} was created concurrently") from None
        applied.extend((v, None) for v in run)
        return len(run)

    async def recover(self) -> tuple[int, int]:
        """At start-up: undo the transactions this instance was committing when it died, and those of any
        instance whose journal is older than the lease (it died: no transaction runs that long), and release
        the conditional-operation locks this instance held. Returns (transactions undone, locks released)."""
        undone = await self.recover_abandoned(include_own=True)
        released = await self.locks.delete_many({"o": self.owner})
        return undone, int(released.deleted_count)

    async def recover_abandoned(self, *, include_own: bool = False) -> int:
        """Undo journaled transactions older than the lease (another instance died while committing), and,
        with ``include_own``, this instance's (only at start-up: later they may be running)."""
        undone = 0
        now = now_micros()
        async for entry in self.journal.find({}):
            owner = entry.get("o")
            if not ((include_own and owner == self.owner) or now - int(entry.get("ts", 0)) > self.lease_micros):
                continue
            for change in reversed(entry["changes"]):
                key, ts, base_vid = change["k"], change["ts"], change["b"]
                current = await self.resources.find_one({"_id": key}, {"v": 1, "ts": 1})
                applied = current is not None and int(current["ts"]) == int(ts)
                if base_vid is None:
                    if applied:
                        await self.resources.delete_one({"_id": key})
                    continue
                copy = await self.history.find_one({"_id": f"{key}/{base_vid}"})
                if applied and copy is not None:
                    restored: dict[str, Any] = {k: copy[k] for k in ("t", "i", "v", "ts", "m", "j", "ix") if k in copy}
                    await self.resources.replace_one({"_id": key}, restored)
                if copy is not None and copy.get("o") == owner:
                    await self.history.delete_one({"_id": f"{key}/{base_vid}"})
            await self.journal.delete_one({"_id": entry["_id"]})
            undone += 1
        return undone

    async def _undo(self, applied: list[tuple[Version, Version | None]]) -> None:
        for new, base in reversed(applied):
            if base is None:
                await self.resources.delete_one({"_id": new.key})
            else:
                await self.resources.replace_one({"_id": new.key}, {**base._fields(), "ix": _ix(base.index)})

    async def _release(self, claimed: list[tuple[Version, Version]]) -> None:
        """Give back claims of a write that did not happen: ``resources`` still holds each base version."""
        try:
            await self._releases.delete([base.version_key for _, base in claimed])  # with concurrent releases
        finally:  # a claim left in the store is then ours and not in flight: the next writer here takes it over
            for _, base in claimed:
                self._in_flight.discard(base.version_key)

    async def _claim(self, base: Version, *, until: int) -> None:
        """Insert the copy of ``base``: the right to write the version after it (``until``: its timestamp)."""
        copy = {"_id": base.version_key, **base._fields(), "ix": _ix(base.index), "u": until, "o": self.owner,
                "c": now_micros()}
        if not await self._claims.insert([copy]):  # with the claims of concurrent writes: one store command
            return
        held = await self.history.find_one({"_id": base.version_key}, {"o": 1, "c": 1})
        current = await self.resources.find_one({"_id": base.key}, {"v": 1})
        if held is None or current is None or int(current["v"]) != base.vid:
            raise VersionConflict(f"{base.key} version {base.vid} was superseded concurrently")
        # write() admits one local writer per claim, so a claim of ours that exists here is not in flight
        mine_and_dead = held.get("o") == self.owner
        expired = now_micros() - int(held.get("c", 0)) > self.lease_micros
        if not (mine_and_dead or expired):
            raise VersionConflict(f"{base.key} is being written by another request")
        # The claim's writer died before its replace. Take it over; of several rivals one wins the takeover lock.
        try:
            await self.locks.insert_one({"_id": f"takeover:{base.version_key}:{held.get('c')}", "o": self.owner,
                                         "ts": now_micros()})
        except DuplicateKeyError:
            raise VersionConflict(f"{base.key} is being recovered by another request") from None
        await self.history.update_one({"_id": base.version_key},
                                      {"$set": {"o": self.owner, "c": now_micros(), "u": until}})

    # ---- locks for conditional operations ---------------------------------------------------------------

    @asynccontextmanager
    async def hold_locks(self, names: Iterable[str]) -> AsyncIterator[None]:
        """Hold several named lease locks (``lock``), taken in name order, so that no two holders of several wait
        for each other; released in reverse."""
        async with contextlib.AsyncExitStack() as stack:
            for name in sorted(set(names)):
                await stack.enter_async_context(self.lock(name))
            yield

    @asynccontextmanager
    async def lock(self, name: str, *, wait_seconds: float = 10.0) -> AsyncIterator[None]:
        """Hold a named lease lock (one ``locks`` document): guards match-then-write of conditional operations.
        Requests of this process wait for it in turn (an ``asyncio.Lock`` per name); the first of them waits for
        other processes' by polling the store. ``LockBusy`` after ``wait_seconds`` in all."""
        deadline = time.monotonic() + wait_seconds
        local, waiting = self._lock_queues.get(name) or (asyncio.Lock(), 0)
        self._lock_queues[name] = (local, waiting + 1)
        try:
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):  # acquire is cancel-safe
                    await local.acquire()
            except TimeoutError:
                raise LockBusy(name) from None
            try:
                async with self._store_lock(name, deadline):
                    yield
            finally:
                local.release()
        finally:
            local, waiting = self._lock_queues[name]
            if waiting == 1:
                del self._lock_queues[name]
            else:
                self._lock_queues[name] = (local, waiting - 1)

    @asynccontextmanager
    async def _store_lock(self, name: str, deadline: float) -> AsyncIterator[None]:
        """The ``locks`` document ``name``, inserted by this holder (polling while another process holds it)."""
        delay = 0.002
        while True:
            ts = now_micros()
            try:
                await self.locks.insert_one({"_id": name, "ts": ts, "o": self.owner})
                break
            except DuplicateKeyError:
                held = await self.locks.find_one({"_id": name})
                if held is not None and ts - int(held["ts"]) > self.lease_micros:
                    await self.locks.delete_one({"_id": name, "ts": held["ts"]})
                    continue
                if time.monotonic() > deadline:
                    raise LockBusy(name) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
        try:
            yield
        finally:
            await asyncio.shield(self.locks.delete_one({"_id": name}))


async def _next(stream: Any) -> Version | None:
    doc = await anext(stream, None)
    return None if doc is None else _from_doc(doc)
