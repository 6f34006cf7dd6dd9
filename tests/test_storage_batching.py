"""Reads by ``_id`` from concurrent requests share store commands, on the real FerretDB; each caller gets its own."""

from __future__ import annotations

import asyncio

import pytest
from pymongo import AsyncMongoClient

from fhir_server.storage import Version, now_micros
from fhir_server.storage.batching import FindBatcher
from tests.conftest import FindCounter, fresh_store


@pytest.fixture
async def store(store_uri: str):
    finds = FindCounter("resources")
    async with fresh_store(store_uri, owner="batch-test", listeners=(finds,)) as store:
        yield store, finds


async def test_concurrent_reads_share_commands_and_get_their_own_documents(store) -> None:
    store, finds = store
    for n in range(40):
        body = f'{{"resourceType":"Basic","id":"b{n}"}}'.encode()
        await store.write(Version(rtype="Basic", rid=f"b{n}", vid=1, ts=now_micros(), method="PUT", body=body),
                          base=None)
    before = finds.count

    async def one(n: int) -> None:
        if n % 2:
            version = await store.current("Basic", f"b{n}")
            assert version is not None and version.body == f'{{"resourceType":"Basic","id":"b{n}"}}'.encode()
        else:  # two of its own, one shared with a neighbour, one that does not exist
            found = await store.current_many("Basic", [f"b{n}", f"b{(n + 1) % 40}", "missing"])
            assert sorted(found) == sorted({f"b{n}", f"b{(n + 1) % 40}"})
            assert all(v.rid == rid and v.index == () and v.vid == 1 for rid, v in found.items())

    await asyncio.gather(*(one(n) for n in range(40)))
    assert finds.count - before <= 3  # 40 reads: the first alone, the rest queued behind it
    assert finds.follow_ups == 0


async def test_a_read_is_one_command_when_every_document_exists(store) -> None:
    """A find by ``_id`` returns at most one document per id: it is asked for in one reply that closes its cursor
    (a reply exactly as large as its batch leaves the cursor open, and the driver then sends a ``getMore``)."""
    store, finds = store
    for n in range(3):
        body = f'{{"resourceType":"Basic","id":"c{n}"}}'.encode()
        await store.write(Version(rtype="Basic", rid=f"c{n}", vid=1, ts=now_micros(), method="PUT", body=body),
                          base=None)
    before = finds.count
    assert sorted(await store.current_many("Basic", ["c0", "c1", "c2"])) == ["c0", "c1", "c2"]
    assert (await store.current("Basic", "c1")) is not None
    assert len(await store.scan_type("Basic", after="c0", limit=2)) == 2  # exactly the limit, more exist
    assert (finds.count - before, finds.follow_ups) == (3, 0)


async def test_a_failed_read_fails_every_caller_of_its_batch(store_uri: str) -> None:
    client: AsyncMongoClient = AsyncMongoClient(store_uri)
    batcher = FindBatcher(client["batchfail"]["resources"])
    await client.close()  # every command now fails
    results = await asyncio.gather(*(batcher.find([f"k{n}"]) for n in range(5)), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)
    assert batcher._flusher is None  # and the batcher is ready for the next reads
