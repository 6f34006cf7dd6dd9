"""Group commit: concurrent inserts, replaces, deletes or finds by ``_id`` in one collection leave for the store
together.

On FerretDB every write command is a SQLite transaction and its writer is serialized, so sixteen clients
creating resources at once cost sixteen transactions for the resources and sixteen for their index
entries. A batcher sends the first request at once; requests that arrive while it is in flight queue and
leave as one ``insert_many`` (``ordered=False``), one unordered ``bulk_write`` of replaces, one ``delete_many``
or one ``find`` by ``$in`` when it returns. Each caller still awaits its own documents, so the order of a
caller's writes (index entries before the version) holds, and a read is sent after it was asked for: it sees
every write completed before. (FerretDB runs each replace of a bulk write in its own transaction; batching
them saves the hub a command per update, ~0.25 ms of CPU.)

Reads are batched because a command costs the hub ~0.2 ms of CPU in PyMongo's async path and FerretDB about
as much again, whatever it returns: under sixteen searching clients most searches' resource fetches share a
command with others'.
"""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar

from pymongo import ReplaceOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

__all__ = ["DeleteBatcher", "FindBatcher", "InsertBatcher", "ReplaceBatcher"]

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
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((items, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch: Batch[Item, Result] = []
                size = 0
                while self._pending and (not batch or size + len(self._pending[0][0]) <= self.limit):
                    items, future = self._pending.pop(0)
                    batch.append((items, future))
                    size += len(items)
                await self._send(batch)
        finally:
            self._flusher = None

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
        errors: dict[int, int] = {}
        try:
            await self.collection.insert_many([d for docs, _ in batch for d in docs], ordered=False)
        except BulkWriteError as exc:
            errors = {int(e["index"]): int(e.get("code", 0)) for e in exc.details.get("writeErrors", [])}
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
            docs = {d["_id"]: d async for d in found}
        except BaseException as exc:
            self._fail(batch, exc)
            return
        for keys, future in batch:
            if not future.done():
                future.set_result({k: docs[k] for k in keys if k in docs})
