"""Reads by ``_id`` from concurrent requests share store commands, on the real FerretDB; each caller gets its own."""

from __future__ import annotations

import asyncio

import pytest
from pymongo import AsyncMongoClient, monitoring

from fhir_server.storage import ResourceStore, Version, now_micros
from fhir_server.storage.batching import FindBatcher, InsertBatcher, ReplaceBatcher, ScanBatcher
from tests.conftest import CommandCounter, fresh_store


@pytest.fixture
async def store(store_uri: str):
    finds = CommandCounter("resources")
    async with fresh_store(store_uri, owner="batch-test", listeners=(finds,)) as store:
        yield store, finds


async def _create_basics(store: ResourceStore, prefix: str, count: int) -> None:
    for n in range(count):
        body = f'{{"resourceType":"Basic","id":"{prefix}{n}"}}'.encode()
        await store.write(Version(rtype="Basic", rid=f"{prefix}{n}", vid=1, ts=now_micros(), method="PUT", body=body),
                          base=None)


async def test_concurrent_reads_share_commands_and_get_their_own_documents(store) -> None:
    store, finds = store
    await _create_basics(store, "b", 40)
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
    await _create_basics(store, "c", 3)
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


async def test_a_failed_scan_fails_every_caller_of_its_batch(store_uri: str) -> None:
    client: AsyncMongoClient = AsyncMongoClient(store_uri)
    batcher = ScanBatcher(client["scanfail"]["search_index"])
    await client.close()  # every command now fails
    fills = [f"T|p{n % 2}" for n in range(6)]
    batcher._fills[fills[1]] = 1.0  # half of them read alone, in commands of their own
    results = await asyncio.gather(*(batcher.scan({"$gte": f"T|p{n % 2}|{n}", "$lt": f"T|p{n % 2}|{n}~"}, 5,
                                                  family=fills[n]) for n in range(6)), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)
    assert batcher._flusher is None  # and the batcher is ready for the next scans


async def test_concurrent_updates_share_replace_commands_and_a_refused_one_fails_alone(store_uri: str) -> None:
    updates = CommandCounter("resources", command="update")
    async with fresh_store(store_uri, owner="replace-test", listeners=(updates,)) as store:
        await _create_basics(store, "u", 30)
        bases = [await store.current("Basic", f"u{n}") for n in range(30)]

        async def update(n: int) -> None:
            base = bases[n]
            assert base is not None
            body = f'{{"resourceType":"Basic","id":"u{n}","meta":{{"versionId":"2"}}}}'.encode()
            await store.write(Version(rtype="Basic", rid=f"u{n}", vid=2, ts=now_micros(), method="PUT", body=body),
                              base=base)

        await asyncio.gather(*(update(n) for n in range(30)))
        assert updates.count <= 3  # 30 replaces: the first alone, the rest queued behind it
        for n in range(30):
            version = await store.current("Basic", f"u{n}")
            assert version is not None and version.vid == 2 and version.body is not None
            assert f'"id":"u{n}"'.encode() in version.body

        batcher = ReplaceBatcher(store.resources)
        results = await asyncio.gather(
            batcher.replace("Basic/u0", {"t": "Basic", "i": "u0", "v": 3}),
            batcher.replace("Basic/u1", {"t": "Basic", "$bad": 1}),  # refused by the store
            batcher.replace("Basic/u2", {"t": "Basic", "i": "u2", "v": 3}), return_exceptions=True)
        assert results[0] is None and results[2] is None and isinstance(results[1], Exception)
        assert (await store.resources.find_one({"_id": "Basic/u0"}) or {}).get("v") == 3
        assert (await store.resources.find_one({"_id": "Basic/u2"}) or {}).get("v") == 3
        assert (await store.resources.find_one({"_id": "Basic/u1"}) or {}).get("v") == 2


async def _index_keys(store: ResourceStore) -> list[str]:
    """Search-index keys of 40 codes (3 Observations each), 2 statuses (200 each) and 60 subjects (3 each)."""
    keys = [f"Observation|{param}|{v:03d}|o{i}|1" for param, values in (("code", 40), ("status", 2), ("subject", 60))
            for v in range(values) for i in range(3 if param != "status" else 200)]
    await store.search_index.insert_many([{"_id": k} for k in keys])
    return sorted(keys)


def _expected(keys: list[str], low: str, high: str, after: str | None, limit: int, backward: bool) -> list[str]:
    """What a scan of ``Observation|low`` to ``Observation|high`` returns, after (``backward``: before) ``after``."""
    inside = [k for k in keys if f"Observation|{low}" <= k < f"Observation|{high}"
              and (after is None or (k < after if backward else k > after))]
    return (inside[::-1] if backward else inside)[:limit]


async def _scan_all(store: ResourceStore, asked: list[tuple[str, str, str | None, int]],
                    backward: bool) -> list[list[str]]:
    return list(await asyncio.gather(*(store.scan_index("Observation", low, high, after=after, limit=limit,
                                                        backward=backward) for low, high, after, limit in asked)))


@pytest.mark.parametrize("backward", [False, True])
async def test_concurrent_index_scans_share_commands_and_get_their_own_keys(store_uri: str, backward: bool) -> None:
    scans = CommandCounter("search_index")
    async with fresh_store(store_uri, owner="scan-test", listeners=(scans,)) as store:
        keys = await _index_keys(store)
        asked: list[tuple[str, str, str | None, int]] = [
            (f"code|{n % 40:03d}|", f"code|{n % 40:03d}|~", None, 21) for n in range(30)]  # some twice
        asked += [(f"subject|{n:03d}|", f"subject|{n + 2:03d}|", None, 4) for n in range(0, 60, 5)]  # 6 keys each
        asked += [("code|010|", "code|012|", "Observation|code|010|o1|1", 1000),  # after (before) a key
                  ("code|999|", "code|999|~", None, 21)]  # nothing
        before = scans.count
        found = await _scan_all(store, asked, backward)
        assert found == [_expected(keys, *scan, backward) for scan in asked]
        assert scans.count - before <= 2 and scans.follow_ups == 0  # 44 scans, one command
        assert any("$or" in f for f in scans.filters[before:])


@pytest.mark.parametrize("backward", [False, True])
async def test_a_range_cut_off_by_the_shared_limit_is_read_to_its_end_alone(store_uri: str, backward: bool) -> None:
    """The reply to a shared scan is the first keys of all its ranges in scan order: a large range fills it, and
    the ranges after it read their keys alone."""
    scans = CommandCounter("search_index")
    async with fresh_store(store_uri, owner="cut-test", listeners=(scans,)) as store:
        keys = await _index_keys(store)
        asked: list[tuple[str, str, str | None, int]] = [
            ("code|000|", "code|000|~", None, 2), ("status|", "status|~", None, 21),
            ("subject|001|", "subject|001|~", None, 21),
            ("subject|007|", "subject|009|", "Observation|subject|007|o2|1", 21)]
        found = await _scan_all(store, asked, backward)
        assert found == [_expected(keys, *scan, backward) for scan in asked]
        # one shared command asked for 65 keys: forward 3 of code|000, then 62 of status, and each subject range
        # is read alone; backward the subject ranges come first, then status, and code|000 is read alone
        shared = [f for f in scans.filters if "$or" in f]
        assert len(shared) == 1 and len(shared[0]["$or"]) == 4
        after = ("code",) if backward else ("subject|001", "subject|007")
        assert [f for f in scans.filters if "$or" not in f and "status" not in str(f)] == [
            f for f in scans.filters if "$or" not in f and any(a in str(f) for a in after)]
        assert len([f for f in scans.filters if "$or" not in f]) == len(after)


async def test_scans_of_a_family_that_fills_its_limits_are_read_alone(store_uri: str) -> None:
    """A large range in a shared command is read up to the sum of its limits: once scans of a type and parameter
    mostly fill their limits, each range of them has a command of its own, shared only by the same scans."""
    scans = CommandCounter("search_index")
    async with fresh_store(store_uri, owner="family-test", listeners=(scans,)) as store:
        keys = await _index_keys(store)
        for _ in range(3):  # status=000 has 200 keys: each scan of 9 fills its limit
            assert await store.scan_index("Observation", "status|000|", "status|000|~", after=None, limit=9) == \
                _expected(keys, "status|000|", "status|000|~", None, 9, False)
        before = len(scans.filters)
        asked: list[tuple[str, str, str | None, int]] = [
            (f"code|{n:03d}|", f"code|{n:03d}|~", None, 21) for n in range(8)]
        asked += [("status|001|", "status|001|~", None, 9), ("status|000|", "status|000|~", None, 9)] * 4
        found = await _scan_all(store, asked, False)
        assert found == [_expected(keys, *scan, False) for scan in asked]
        sent = scans.filters[before:]
        assert len(sent) == 3  # the codes in one command, each status range in its own (four scans each)
        assert not any("status" in str(f) for f in sent if "$or" in f)
        assert sorted(str(f) for f in sent if "$or" not in f) == sorted(
            str({"_id": {"$gte": f"Observation|status|{v}|", "$lt": f"Observation|status|{v}|~"}})
            for v in ("000", "001"))


class _InsertedIds(monitoring.CommandListener):
    """The ``_id``s of each ``insert`` command sent to one collection, in the order they were sent."""

    def __init__(self, collection: str) -> None:
        self.collection = collection
        self.commands: list[list[str]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "insert" and event.command.get("insert") == self.collection:
            self.commands.append([d["_id"] for d in event.command["documents"]])

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_concurrent_inserts_leave_in_key_order_and_each_caller_gets_its_own_duplicates(store_uri: str) -> None:
    inserted = _InsertedIds("entries")
    client: AsyncMongoClient = AsyncMongoClient(store_uri, event_listeners=[inserted])
    try:
        collection = client["insertorder"]["entries"]
        await collection.drop()
        await collection.insert_many([{"_id": f"k{n:02d}"} for n in (12, 3, 9)])  # there already: duplicates
        batcher = InsertBatcher(collection)
        # each caller's keys out of order and interleaved with the others': caller n has k<n+10>, k<n>, k<n+5>
        asked = [[f"k{n + 10:02d}", f"k{n:02d}", f"k{n + 5:02d}"] for n in range(5)]
        results = await asyncio.gather(*(batcher.insert([{"_id": k} for k in keys]) for keys in asked))
        assert results == [set(), set(), {0}, {1}, {2}]  # k12 is caller 2's first key, k03 caller 3's second...
        assert inserted.commands[1:] == [[f"k{n:02d}" for n in range(15)]]  # in one command, in key order
        assert sorted([d["_id"] async for d in collection.find({})]) == [f"k{n:02d}" for n in range(15)]
    finally:
        await client.close()
