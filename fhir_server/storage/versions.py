"""Versioned resource storage on the MongoDB wire protocol (MongoDB, or FerretDB without transactions).

Two collections:

- ``history``: one immutable document per version, ``_id`` = ``Type/id/vid``. Inserting version n+1 is
  the write lock: of two writers of n+1, the second gets a duplicate key (DESIGN.md, lessons from Spark).
  A version is inserted *pending* (``p``) and becomes visible only once ``resources`` points at it.
- ``resources``: the current version of each resource, ``_id`` = ``Type/id``, plus its search index
  entries. A read is one lookup by ``_id``.

A write is: claim n+1 in ``history`` (pending) -> replace ``resources`` -> clear ``p``. A process killed
after the claim leaves a pending orphan that nobody can see (``vid`` > current); the next writer of that
resource removes it once its lease has expired. A process killed after the replace leaves a committed
version whose ``p`` is still set; readers check ``resources`` for such versions, so it is visible, as it
must be. Only filters on ``_id`` alone are used on hot paths: FerretDB's SQLite backend pushes down
nothing else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from bson import Binary
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

__all__ = ["HistoryPage", "LockBusy", "ResourceStore", "Version", "VersionConflict", "now_micros"]

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
    """Version ``vid`` of the resource was claimed by another writer."""


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
    index: dict[str, Any] = field(default_factory=dict)

    @property
    def deleted(self) -> bool:
        return self.body is None

    @property
    def key(self) -> str:
        return f"{self.rtype}/{self.rid}"

    def _history_doc(self, *, pending: str | None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "_id": f"{self.key}/{self.vid}", "t": self.rtype, "i": self.rid, "v": self.vid, "ts": self.ts,
            "m": self.method, "j": None if self.body is None else Binary(self.body),
        }
        if pending is not None:
            doc["p"] = 1
            doc["o"] = pending  # the hub instance that claimed it
        return doc

    def _current_doc(self) -> dict[str, Any]:
        return {
            "t": self.rtype, "i": self.rid, "v": self.vid, "ts": self.ts, "m": self.method,
            "j": None if self.body is None else Binary(self.body), "ix": self.index,
        }


def _from_doc(doc: dict[str, Any]) -> Version:
    body = doc.get("j")
    return Version(rtype=doc["t"], rid=doc["i"], vid=int(doc["v"]), ts=int(doc["ts"]), method=doc.get("m", "PUT"),
                   body=None if body is None else bytes(body))


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
        self.lease_micros = int(lease_seconds * 1_000_000)

    async def ensure_indexes(self) -> None:
        """Create the indexes the hub needs; idempotent (same name and keys each start)."""
        await self.resources.create_index([("t", ASCENDING), ("ix.identifier", ASCENDING)], name="t_identifier")
        await self.history.create_index([("t", ASCENDING), ("ts", DESCENDING)], name="t_ts")
        await self.history.create_index([("ts", DESCENDING)], name="ts")
        await self.history.create_index([("t", ASCENDING), ("i", ASCENDING), ("v", DESCENDING)], name="t_i_v")
        await self.history.create_index([("p", ASCENDING), ("o", ASCENDING)], name="pending")
        await self.locks.create_index([("o", ASCENDING)], name="owner")

    # ---- reads -------------------------------------------------------------------------------------------

    async def current(self, rtype: str, rid: str) -> Version | None:
        doc = await self.resources.find_one({"_id": f"{rtype}/{rid}"}, {"ix": 0})
        return None if doc is None else _from_doc(doc)

    async def version(self, rtype: str, rid: str, vid: int) -> Version | None:
        doc = await self.history.find_one({"_id": f"{rtype}/{rid}/{vid}"})
        if doc is None:
            return None
        if doc.get("p") and not await self._committed(rtype, rid, vid):
            return None
        return _from_doc(doc)

    async def _committed(self, rtype: str, rid: str, vid: int) -> bool:
        cur = await self.resources.find_one({"_id": f"{rtype}/{rid}"}, {"v": 1})
        return cur is not None and int(cur["v"]) >= vid

    async def find_current(self, rtype: str, query: dict[str, Any], *, limit: int = 2) -> list[Version]:
        """Current (not deleted) versions matching a store query built by the search package."""
        docs = self.resources.find({"t": rtype, "j": {"$ne": None}, **query}, {"ix": 0}).limit(limit)
        return [_from_doc(d) async for d in docs]

    async def instance_history(
        self, *, rtype: str, rid: str, since: int | None, at: int | None, count: int, before_vid: int | None,
    ) -> tuple[list[Version], int | None]:
        """Versions of one resource, newest first, fetched by ``_id`` (cheap on every engine).

        Returns the page and the vid to continue below (None when done).
        """
        cur = await self.resources.find_one({"_id": f"{rtype}/{rid}"}, {"v": 1})
        if cur is None:
            return [], None
        top = int(cur["v"]) if before_vid is None else min(int(cur["v"]), before_vid - 1)
        out: list[Version] = []
        vid = top
        while vid >= 1 and len(out) < count:
            batch = list(range(vid, max(vid - count, 0), -1))
            docs = await asyncio.gather(*(self.history.find_one({"_id": f"{rtype}/{rid}/{v}"}) for v in batch))
            for doc in docs:
                vid -= 1
                if doc is None:
                    continue
                version = _from_doc(doc)
                if since is not None and version.ts < since:
                    return out, None
                if at is not None and version.ts > at:
                    continue
                out.append(version)
                if at is not None or len(out) == count:
                    break
            if at is not None and out:
                return out, None
        return out, (out[-1].vid if out and vid >= 1 else None)

    async def history_page(
        self, *, rtype: str | None, rid: str | None, since: int | None, at: int | None, count: int,
        cursor: tuple[int, str] | None,
    ) -> HistoryPage:
        """Committed versions, newest first. ``at``: only the version current at that time per resource."""
        query: dict[str, Any] = {}
        if rtype is not None:
            query["t"] = rtype
        if rid is not None:
            query["i"] = rid
        ts_range: dict[str, int] = {}
        if since is not None:
            ts_range["$gte"] = since
        if at is not None:
            ts_range["$lte"] = at
        if ts_range:
            query["ts"] = ts_range
        if cursor is not None:
            ts, key = cursor
            query["$or"] = [{"ts": {"$lt": ts}}, {"ts": ts, "_id": {"$lt": key}}]
        found = self.history.find(query).sort([("ts", DESCENDING), ("_id", DESCENDING)])
        out: list[Version] = []
        seen: set[str] = set()
        last: tuple[int, str] | None = None
        async for doc in found:
            last = (int(doc["ts"]), str(doc["_id"]))
            if doc.get("p") and not await self._committed(doc["t"], doc["i"], int(doc["v"])):
                continue
            version = _from_doc(doc)
            if at is not None:  # FHIR R4 http.html#history: _at = the version current at that instant
                if version.key in seen:
                    continue
                seen.add(version.key)
            out.append(version)
            if len(out) > count:
                break
        if len(out) > count:
            last_kept = out[count - 1]
            return HistoryPage(out[:count], (last_kept.ts, f"{last_kept.key}/{last_kept.vid}"))
        del last
        return HistoryPage(out, None)

    # ---- writes ------------------------------------------------------------------------------------------

    async def write(self, new: Version) -> Version:
        """Store ``new`` as version ``new.vid`` of its resource; the caller read version ``new.vid - 1``.

        Raises VersionConflict if another writer claimed that version first.
        """
        await self._claim(new)
        try:
            await self.resources.replace_one({"_id": new.key}, new._current_doc(), upsert=True)
        except BaseException:
            await self._abandon(new)
            raise
        await self.history.update_one({"_id": f"{new.key}/{new.vid}"}, {"$unset": {"p": "", "o": ""}})
        return new

    async def recover(self) -> tuple[int, int]:
        """At start-up: settle the claims and locks this hub instance left when it last stopped.

        None of them can be in flight (the instance is starting), so each pending claim is either committed
        (``resources`` reached it: clear ``p``) or an orphan (delete it). Returns (committed, removed).
        """
        committed = removed = 0
        async for doc in self.history.find({"p": 1, "o": self.owner}, {"t": 1, "i": 1, "v": 1, "ts": 1}):
            if await self._committed(doc["t"], doc["i"], int(doc["v"])):
                await self.history.update_one({"_id": doc["_id"]}, {"$unset": {"p": "", "o": ""}})
                committed += 1
            else:
                await self.history.delete_one({"_id": doc["_id"]})
                removed += 1
        await self.locks.delete_many({"o": self.owner})
        return committed, removed

    async def _claim(self, new: Version) -> None:
        doc = new._history_doc(pending=self.owner)
        for _ in range(2):
            try:
                await self.history.insert_one(doc)
                return
            except DuplicateKeyError:
                if not await self._remove_orphan(new):
                    raise VersionConflict(f"{new.key} version {new.vid} was written concurrently") from None
        raise VersionConflict(f"{new.key} version {new.vid} was written concurrently")

    async def _remove_orphan(self, new: Version) -> bool:
        """Remove a pending claim of ``new.vid`` left by a writer that died; True if one was removed."""
        held = await self.history.find_one({"_id": f"{new.key}/{new.vid}"}, {"p": 1, "ts": 1})
        if held is None:
            return True  # removed meanwhile: try the claim again
        if not held.get("p") or now_micros() - int(held["ts"]) < self.lease_micros:
            return False
        if await self._committed(new.rtype, new.rid, new.vid):
            return False
        result = await self.history.delete_one({"_id": held["_id"], "ts": held["ts"], "p": 1})
        return result.deleted_count == 1

    async def _abandon(self, new: Version) -> None:
        """Undo a claim whose commit failed (best effort: a leftover is an invisible orphan)."""
        try:
            await asyncio.shield(self.history.delete_one({"_id": f"{new.key}/{new.vid}", "ts": new.ts}))
        except Exception:  # noqa: S110 - the orphan stays invisible and is removed by the next writer
            pass

    # ---- locks for conditional operations ---------------------------------------------------------------

    @asynccontextmanager
    async def lock(self, name: str, *, wait_seconds: float = 10.0) -> AsyncIterator[None]:
        """Hold a named lease lock (one ``locks`` document). Guards match-then-write of conditional operations."""
        deadline = time.monotonic() + wait_seconds
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
