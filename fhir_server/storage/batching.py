"""Group commit: concurrent inserts, deletes or finds by ``_id`` in one collection leave for the store together.

On FerretDB every write command is a SQLite transaction and its writer is serialized, so sixteen clients
creating resources at once cost sixteen transactions for the resources and sixteen for their index
entries. A batcher sends the first request at once; requests that arrive while it is in flight queue and
leave as one ``insert_many`` (``ordered=False``), one ``delete_many`` or one ``find`` by ``$in`` when it
returns. Each caller still awaits its own documents, so the order of a caller's writes (index entries before
the version) holds, and a read is sent after it was asked for: it sees every write completed before.

Reads are batched because a command costs the hub ~0.2 ms of CPU in PyMongo's async path and FerretDB about
as much again, whatever it returns: under sixteen searching clients most searches' resource fetches share a
command with others'.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

__all__ = ["DeleteBatcher", "FindBatcher", "InsertBatcher"]

_MAX_DOCS = 2000  # per command: well under the 48 MB message and 100,000 write batch limits
_MAX_KEYS = 500  # per find: a 16 MB reply holds 500 resources of 32 kB
_DUPLICATE = 11000


class InsertBatcher:
    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self.collection = collection
        self._pending: list[tuple[list[dict[str, Any]], asyncio.Future[set[int]]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def insert(self, docs: list[dict[str, Any]]) -> set[int]:
        """Insert ``docs``; returns the positions (in ``docs``) refused as duplicate ``_id``s. Other errors raise."""
        if not docs:
            return set()
        future: asyncio.Future[set[int]] = asyncio.get_running_loop().create_future()
        self._pending.append((docs, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch: list[tuple[list[dict[str, Any]], asyncio.Future[set[int]]]] = []
                size = 0
                while self._pending and (not batch or size + len(self._pending[0][0]) <= _MAX_DOCS):
                    docs, future = self._pending.pop(0)
                    batch.append((docs, future))
                    size += len(docs)
                await self._send(batch)
        finally:
            self._flusher = None

    async def _send(self, batch: list[tuple[list[dict[str, Any]], asyncio.Future[set[int]]]]) -> None:
        errors: dict[int, int] = {}
        try:
            await self.collection.insert_many([d for docs, _ in batch for d in docs], ordered=False)
        except BulkWriteError as exc:
            errors = {int(e["index"]): int(e.get("code", 0)) for e in exc.details.get("writeErrors", [])}
        except BaseException as exc:  # the store failed: every caller of this batch gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
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


class DeleteBatcher:
    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self.collection = collection
        self._pending: list[tuple[list[str], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def delete(self, keys: list[str]) -> None:
        """Delete the documents with these ``_id``s (those that exist)."""
        if not keys:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((keys, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        await asyncio.shield(future)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch: list[tuple[list[str], asyncio.Future[None]]] = []
                size = 0
                while self._pending and (not batch or size + len(self._pending[0][0]) <= 500):
                    keys, future = self._pending.pop(0)
                    batch.append((keys, future))
                    size += len(keys)
                error: BaseException | None = None
                try:
                    await self.collection.delete_many({"_id": {"$in": [k for keys, _ in batch for k in keys]}})
                except BaseException as exc:
                    error = exc
                for _, future in batch:
                    if not future.done():
                        if error is None:
                            future.set_result(None)
                        else:
                            future.set_exception(error)
                if error is not None and not isinstance(error, Exception):
                    raise error
        finally:
            self._flusher = None


class FindBatcher:
    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self.collection = collection
        self._pending: list[tuple[list[str], asyncio.Future[dict[str, dict[str, Any]]]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def find(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The documents with these ``_id``s (those that exist), by ``_id``."""
        if not keys:
            return {}
        future: asyncio.Future[dict[str, dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._pending.append((keys, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch: list[tuple[list[str], asyncio.Future[dict[str, dict[str, Any]]]]] = []
                wanted: dict[str, None] = {}
                while self._pending and (not batch or len(wanted) + len(self._pending[0][0]) <= _MAX_KEYS):
                    keys, future = self._pending.pop(0)
                    batch.append((keys, future))
                    wanted.update(dict.fromkeys(keys))
                error: BaseException | None = None
                docs: dict[str, dict[str, Any]] = {}
                try:
                    # all in the first reply (a find returns 101 documents, then one getMore per batch)
                    found = self.collection.find({"_id": {"$in": list(wanted)}}, batch_size=len(wanted))
                    docs = {d["_id"]: d async for d in found}
                except BaseException as exc:  # the store failed: every caller of this batch gets the error
                    error = exc
                for keys, future in batch:
                    if future.done():
                        continue
                    if error is None:
                        future.set_result({k: docs[k] for k in keys if k in docs})
                    else:
                        future.set_exception(error)
                if error is not None and not isinstance(error, Exception):
                    raise error
        finally:
            self._flusher = None
