"""Group commit: concurrent inserts, replaces, deletes or finds by ``_id`` in one collection leave for the store
together.

On FerretDB every write command is a SQLite transaction (one per 1,000 documents of an insert: the embedded store's
``--test-batch-size``) and writers take their turns one after another, so sixteen clients creating resources at once
cost sixteen transactions for the resources and sixteen for their index entries. A batcher sends the first request
at once; requests that arrive while it is in flight queue and leave as one ``insert_many`` (``ordered=False``), one
unordered ``bulk_write`` of replaces, one ``delete_many`` or one ``find`` by ``$in`` when it returns. Each caller
still awaits its own documents, so the order of a caller's writes (index entries before the version) holds, and a
read is sent after it was asked for: it sees every write completed before. (FerretDB runs each replace of a bulk
write in its own transaction; batching them saves the hub a command per update, ~0.25 ms of CPU.)

Reads are batched because a command costs the hub ~0.2 ms of CPU in PyMongo's async path and FerretDB about
as much again, whatever it returns: under sixteen searching clients most searches' resource fetches share a
command with others', and so do their scans of the search index (``ScanBatcher``).
"""

from __future__ import annotations

import asyncio
import bisect
from typing import Any, Generic, TypeVar

from pymongo import ASCENDING, DESCENDING, ReplaceOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

__all__ = ["DeleteBatcher", "FindBatcher", "InsertBatcher", "ReplaceBatcher", "ScanBatcher", "id_ordered"]

_MAX_DOCS = 2000  # per command: well under the 48 MB message and 100,000 write batch limits
_MAX_KEYS = 500  # per delete or find: a 16 MB reply holds 500 resources of 32 kB
_DUPLICATE = 11000

Item = TypeVar("Item")
Result = TypeVar("Result")
Batch = list[tuple[list[Item], "asyncio.Future[Result]"]]


class _Batcher(Generic[Item, Result]):
    """The queue: requests wait while a command is in flight, then leave together (up to ``limit`` items)."""

    limit = _MAX_DOCS

    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self.collection = collection
        self._pending: Batch[Item, Result] = []
        self._flusher: asyncio.Task[None] | None = None

    async def _submit(self, items: list[Item]) -> Result:
        return await asyncio.shield(self._queue(items))

    def _queue(self, items: list[Item]) -> asyncio.Future[Result]:
        """Queue a request (the flusher started if none runs); its future gets the result."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((items, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch: Batch[Item, Result] = []
                size = 0
                while self._pending and (not batch or size + self._size(self._pending[0][0]) <= self.limit):
                    items, future = self._pending.pop(0)
                    batch.append((items, future))
                    size += self._size(items)
                await self._send(batch)
        finally:
            self._flusher = None

    def _size(self, items: list[Item]) -> int:
        """What ``items`` count towards ``limit``."""
        return len(items)

    async def _send(self, batch: Batch[Item, Result]) -> None:
        raise NotImplementedError

    @staticmethod
    def _succeed(batch: Batch[Item, Result], result: Result) -> None:
        """Every caller of this batch gets ``result``."""
        for _, future in batch:
            if not future.done():
                future.set_result(result)

    @staticmethod
    def _fail(batch: Batch[Item, Result], exc: BaseException) -> None:
        """The store failed: every caller of this batch gets the error (and a cancellation goes on up)."""
        for _, future in batch:
            if not future.done():
                future.set_exception(exc)
        if not isinstance(exc, Exception):
            raise exc


class InsertBatcher(_Batcher[dict[str, Any], set[int]]):
    async def insert(self, docs: list[dict[str, Any]]) -> set[int]:
        """Insert ``docs``; returns the positions (in ``docs``) refused as duplicate ``_id``s. Other errors raise."""
        return await self._submit(docs) if docs else set()

    async def _send(self, batch: Batch[dict[str, Any], set[int]]) -> None:
        # In _id order: the store's B-tree takes them leaf by leaf instead of jumping between random pages (FerretDB
        # wrote ~20 % fewer pages to its WAL for the index entries of 100-entry transactions; docs/benchmarks.md).
        flat = [d for docs, _ in batch for d in docs]
        order = sorted(range(len(flat)), key=lambda i: flat[i]["_id"])
        errors: dict[int, int] = {}  # position in ``flat``: error code
        try:
            await self.collection.insert_many([flat[i] for i in order], ordered=False)
        except BulkWriteError as exc:
            errors = {order[int(e["index"])]: int(e.get("code", 0)) for e in exc.details.get("writeErrors", [])}
        except BaseException as exc:
            self._fail(batch, exc)
            return
        offset = 0
        for docs, future in batch:
            mine = {i: errors[offset + i] for i in range(len(docs)) if offset + i in errors}
            offset += len(docs)
            if future.done():
                continue
            other = [code for code in mine.values() if code != _DUPLICATE]
            if other:
                future.set_exception(RuntimeError(f"insert refused by the store (code {other[0]})"))
            else:
                future.set_result(set(mine))


class ReplaceBatcher(_Batcher[tuple[str, dict[str, Any]], None]):
    limit = _MAX_KEYS

    async def replace(self, key: str, doc: dict[str, Any]) -> None:
        """Replace the document with ``_id`` ``key`` by ``doc`` (without ``_id``). Callers hold the document's
        claim, so no two replaces of one document meet in a batch; an error of the store for it raises."""
        await self._submit([(key, doc)])

    async def _send(self, batch: Batch[tuple[str, dict[str, Any]], None]) -> None:
        try:
            await self.collection.bulk_write([ReplaceOne({"_id": key}, doc) for items, _ in batch
                                              for key, doc in items], ordered=False)
        except Exception:
            await self._one_by_one(batch)
        except BaseException as exc:
            self._fail(batch, exc)
        else:
            self._succeed(batch, None)

    async def _one_by_one(self, batch: Batch[tuple[str, dict[str, Any]], None]) -> None:
        """Which replaces of a failed bulk write were applied is not known (FerretDB's reply to a partly refused
        one is not even parsable by PyMongo); a replace is idempotent and its caller holds the claim, so each is
        sent again alone and its caller gets its own outcome."""
        for items, future in batch:
            try:
                for key, doc in items:
                    await self.collection.replace_one({"_id": key}, doc)
            except Exception as exc:
                self._fail([(items, future)], exc)
            else:
                self._succeed([(items, future)], None)


class DeleteBatcher(_Batcher[str, None]):
    limit = _MAX_KEYS

    async def delete(self, keys: list[str]) -> None:
        """Delete the documents with these ``_id``s (those that exist)."""
        if keys:
            await self._submit(keys)

    async def _send(self, batch: Batch[str, None]) -> None:
        try:
            await self.collection.delete_many({"_id": {"$in": [k for keys, _ in batch for k in keys]}})
        except BaseException as exc:
            self._fail(batch, exc)
        else:
            self._succeed(batch, None)


class FindBatcher(_Batcher[str, dict[str, dict[str, Any]]]):
    limit = _MAX_KEYS

    async def find(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The documents with these ``_id``s (those that exist), by ``_id``."""
        return await self._submit(keys) if keys else {}

    async def _send(self, batch: Batch[str, dict[str, dict[str, Any]]]) -> None:
        wanted = list(dict.fromkeys(k for keys, _ in batch for k in keys))
        try:
            # all in one reply that closes the cursor: a find returns 101 documents, then one getMore per batch,
            # and a reply exactly as large as its batch leaves the cursor open (one getMore more); with the limit,
            # PyMongo asks for a batch one larger than the limit, so the reply is the last
            found = self.collection.find({"_id": {"$in": wanted}}, batch_size=len(wanted)).limit(len(wanted))
            docs = {d["_id"]: d for d in await found.to_list()}
        except BaseException as exc:
            self._fail(batch, exc)
            return
        for keys, future in batch:
            if not future.done():
                future.set_result({k: docs[k] for k in keys if k in docs})


async def id_ordered(collection: AsyncCollection[dict[str, Any]], filt: dict[str, Any], *, backward: bool,
                     limit: int, projection: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` documents matching ``filt`` in ``_id`` order (``backward``: reversed), all in the first
    reply (a find returns 101 documents, then one getMore per batch), read by ``to_list()``: ``async for`` costs the
    hub twice the CPU per document (3.7 against 7.4 ms for 5,520 keys)."""
    found = collection.find(filt, projection, batch_size=limit)
    return await found.sort("_id", DESCENDING if backward else ASCENDING).limit(limit).to_list()


# an _id range: {"$gte" or "$gt": low, "$lt": high}, and a "$regex" filter, a "$not": {"$regex": ...} or neither
Bounds = dict[str, Any]
Scan = tuple[Bounds, int, bool]  # a range, how many of its first keys are wanted, and whether it is read alone


class ScanBatcher(_Batcher[Scan, tuple[list[str], Bounds | None]]):
    """Scans of ``_id`` ranges in one direction (``backward``: descending), each with a limit (the search index's
    scans). Scans queued while a command is in flight leave together: as one ``find`` of the ``$or`` of their
    ranges, sorted by ``_id`` and limited to the sum of their limits, each caller taking its range's keys from
    the reply. A chained search made two commands of its own; under sixteen clients most of its scans now share
    one (on FerretDB with the hub's patch, ``ferretdb-union-of-id-ranges``, SQLite reads each range by the
    ``_id`` index, at most that sum of keys from each).

    The reply is the first keys of the union, so a range can come back short when other ranges fill the limit
    before its keys: its caller then reads the rest alone. A large range in a shared command is read up to the
    sum of every limit in it, so a scan of a family (type and parameter) whose scans have mostly filled their
    limits lately (``status=active``, history) is read alone: in a command of its own range, which the same
    scans queued with it share (sixteen clients polling one history page read it once)."""

    limit = 4096  # keys asked for per batch
    _MIN_SIZE = 64  # what a scan counts towards ``limit`` at least: at most 64 ranges per batch
    _MAX_SHARED = 1024  # a scan asking for more keys goes alone, at once

    def __init__(self, collection: AsyncCollection[dict[str, Any]], *, backward: bool = False) -> None:
        super().__init__(collection)
        self.backward = backward
        self._fills: dict[str, float] = {}  # per family: how often its scans filled their limit lately

    async def scan(self, bounds: Bounds, limit: int, *, family: str) -> list[str]:
        """The first ``limit`` keys within ``bounds``, in this batcher's order."""
        if limit <= 0:
            return []
        # a filtered scan reads its range whole, and its keys are not the range's: alone
        if limit <= self._MAX_SHARED and "$regex" not in bounds and "$not" not in bounds:
            keys, rest = await self._submit([(bounds, limit, self._fills.get(family, 0.0) >= 0.25)])
            if rest is not None:
                keys += await self._alone(rest, limit - len(keys))
        else:
            keys = await self._alone(bounds, limit)
        self._learn(family, len(keys) >= limit)
        return keys

    async def scan_many(self, ranges: list[tuple[Bounds, str]], limit: int) -> list[list[str]]:
        """``scan`` of each (bounds, family) at once, unfiltered: queued together and awaited together, without a
        task each (``$everything`` probes ~65 types' ranges); ranges of more than ``_MAX_SHARED`` keys each go
        alone, as ``scan`` sends them, concurrently."""
        assert limit > 0
        assert not any("$regex" in bounds or "$not" in bounds for bounds, _ in ranges)
        if limit > self._MAX_SHARED:
            return list(await asyncio.gather(*(self.scan(bounds, limit, family=family) for bounds, family in ranges)))
        futures = [self._queue([(bounds, limit, self._fills.get(family, 0.0) >= 0.25)]) for bounds, family in ranges]
        replies = await asyncio.gather(*(asyncio.shield(f) for f in futures))
        out = []
        for (_, family), (keys, rest) in zip(ranges, replies, strict=True):
            if rest is not None:
                keys += await self._alone(rest, limit - len(keys))
            self._learn(family, len(keys) >= limit)
            out.append(keys)
        return out

    def _learn(self, family: str, filled: bool) -> None:
        if len(self._fills) >= 10_000:  # families come from requests' parameters: forget rather than grow
            self._fills.clear()
        before = self._fills.get(family)
        self._fills[family] = float(filled) if before is None else 0.8 * before + 0.2 * float(filled)

    async def _alone(self, bounds: Bounds, limit: int) -> list[str]:
        return [d["_id"] for d in await id_ordered(self.collection, {"_id": bounds}, backward=self.backward,
                                                   limit=limit)]

    def _size(self, items: list[Scan]) -> int:
        return sum(max(limit, self._MIN_SIZE) for _, limit, _ in items)

    async def _send(self, batch: Batch[Scan, tuple[list[str], Bounds | None]]) -> None:
        """One command for the shared scans, and one for each range read alone, at once."""
        commands: dict[tuple[tuple[str, str], ...] | None, Batch[Scan, tuple[list[str], Bounds | None]]] = {}
        for items, future in batch:
            bounds, _, alone = items[0]
            commands.setdefault(_range_key(bounds) if alone else None, []).append((items, future))
        if len(commands) == 1:  # the usual case: no task to create
            await self._send_one(batch)
        else:
            await asyncio.gather(*(self._send_one(callers) for callers in commands.values()))

    async def _send_one(self, batch: Batch[Scan, tuple[list[str], Bounds | None]]) -> None:
        ranges: dict[tuple[tuple[str, str], ...], int] = {}  # each distinct range once, with its largest limit
        for items, _ in batch:
            for bounds, limit, _ in items:
                key = _range_key(bounds)
                ranges[key] = max(ranges.get(key, 0), limit)
        total = sum(ranges.values())
        filt = {"$or": [{"_id": dict(r)} for r in ranges]} if len(ranges) > 1 else {"_id": dict(next(iter(ranges)))}
        try:
            keys = [d["_id"] for d in await id_ordered(self.collection, filt, backward=self.backward, limit=total)]
        except BaseException as exc:
            self._fail(batch, exc)
            return
        cut = keys[-1] if len(keys) >= total else None  # every key of the union before it is in the reply
        ordered = keys[::-1] if self.backward else keys  # ascending
        for items, future in batch:
            bounds, limit, _ = items[0]
            if "$gt" in bounds:
                first = bisect.bisect_right(ordered, bounds["$gt"])
            else:
                first = bisect.bisect_left(ordered, bounds["$gte"])
            end = max(first, bisect.bisect_left(ordered, bounds["$lt"]))
            if self.backward:  # the last keys of the range, descending
                mine = ordered[max(first, end - limit):end][::-1]
            else:
                mine = ordered[first:min(end, first + limit)]
            if not future.done():
                future.set_result((mine, None if cut is None or len(mine) >= limit else self._rest(bounds, cut)))

    def _rest(self, bounds: Bounds, cut: str) -> Bounds | None:
        """What remains of ``bounds`` after a reply that ended at ``cut`` (None: nothing, the range ended before)."""
        low: str = bounds.get("$gt") or bounds.get("$gte") or ""
        high: str = bounds["$lt"]
        if self.backward:
            if low >= cut:
                return None
            return {**bounds, "$lt": cut} if cut < high else bounds
        if high <= cut:
            return None
        return {"$gt": cut, "$lt": high} if cut >= low else bounds


def _range_key(bounds: Bounds) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(bounds.items()))
