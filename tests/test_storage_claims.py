"""The write protocol of the versioned store, step by step, on the real FerretDB: claims left by dead writers."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from pymongo import AsyncMongoClient

from fhir_server.storage import LockBusy, ResourceStore, Version, VersionConflict, now_micros


def _version(rid: str, vid: int, body: bytes | None = b'{"resourceType":"Basic"}') -> Version:
    return Version(rtype="Basic", rid=rid, vid=vid, ts=now_micros(), method="PUT", body=body)


@pytest.fixture
async def stores(store_uri: str):
    client: AsyncMongoClient = AsyncMongoClient(store_uri)
    db = client[f"claims{uuid.uuid4().hex[:8]}"]
    mine = ResourceStore(db, owner="hub-a", lease_seconds=60)
    other = ResourceStore(db, owner="hub-b", lease_seconds=60)
    await mine.ensure_indexes()
    yield mine, other
    await client.close()


async def _dead_claim(store: ResourceStore, base: Version, *, age_seconds: float = 0) -> None:
    """What a writer killed between its claim and its commit leaves behind."""
    await store.history.insert_one({"_id": base.version_key, "t": base.rtype, "i": base.rid, "v": base.vid,
                                    "ts": base.ts, "m": base.method, "j": base.body, "o": store.owner,
                                    "c": now_micros() - int(age_seconds * 1_000_000)})


async def test_create_is_one_insert_and_refuses_a_second(stores) -> None:
    mine, other = stores
    v1 = await mine.write(_version("a", 1), base=None)
    with pytest.raises(VersionConflict):
        await other.write(_version("a", 1), base=None)
    assert (await mine.current("Basic", "a")) == v1
    assert await mine.history.count_documents({}) == 0  # nothing superseded yet


async def test_update_copies_the_superseded_version(stores) -> None:
    mine, _ = stores
    v1 = await mine.write(_version("b", 1, b'{"v":1}'), base=None)
    v2 = await mine.write(_version("b", 2, b'{"v":2}'), base=v1)
    assert (await mine.version("Basic", "b", 1)).body == b'{"v":1}'
    assert (await mine.version("Basic", "b", 2)).body == b'{"v":2}'
    assert await mine.version("Basic", "b", 3) is None
    with pytest.raises(VersionConflict):  # a second writer based on v1 loses
        await mine.write(_version("b", 2, b'{"lost":1}'), base=v1)
    assert (await mine.current("Basic", "b")) == v2


async def test_own_dead_claim_is_taken_over_at_once(stores) -> None:
    mine, _ = stores
    v1 = await mine.write(_version("c", 1), base=None)
    await _dead_claim(mine, v1)  # this instance died after claiming v1, before committing v2
    assert (await mine.current("Basic", "c")).vid == 1  # nothing half-visible
    v2 = await mine.write(_version("c", 2), base=v1)  # restarted instance: not in flight here, so dead
    assert (await mine.current("Basic", "c")) == v2


async def test_other_instance_claim_blocks_until_its_lease_expires(stores) -> None:
    mine, other = stores
    v1 = await mine.write(_version("d", 1), base=None)
    await _dead_claim(other, v1)  # fresh claim of another hub instance: maybe still in flight
    with pytest.raises(VersionConflict):
        await mine.write(_version("d", 2), base=v1)
    await mine.history.delete_one({"_id": v1.version_key})
    await _dead_claim(other, v1, age_seconds=120)  # older than the 60 s lease: its writer is gone
    v2 = await mine.write(_version("d", 2), base=v1)
    assert (await mine.current("Basic", "d")) == v2


async def test_history_page_merges_current_and_superseded(stores) -> None:
    mine, _ = stores
    a1 = await mine.write(_version("h1", 1), base=None)
    b1 = await mine.write(_version("h2", 1), base=None)
    a2 = await mine.write(_version("h1", 2), base=a1)
    await _dead_claim(mine, b1)  # a claim's copy duplicates the current version; it must appear once
    seen: list[str] = []
    cursor = None
    while True:
        page = await mine.history_page(rtype="Basic", since=None, at=None, count=1, cursor=cursor)
        seen += [v.version_key for v in page.versions]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [a2.version_key, b1.version_key, a1.version_key]


async def test_history_at_gives_the_version_current_then_across_pages(stores) -> None:
    mine, _ = stores
    a1 = await mine.write(_version("at-a", 1, b'{"a":1}'), base=None)
    b1 = await mine.write(_version("at-b", 1, b'{"b":1}'), base=None)
    a2 = await mine.write(_version("at-a", 2, b'{"a":2}'), base=a1)
    a3 = await mine.write(_version("at-a", 3, b'{"a":3}'), base=a2)

    async def at(instant: int) -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            page = await mine.history_page(rtype="Basic", since=None, at=instant, count=1, cursor=cursor)
            seen += [v.version_key for v in page.versions if v.rid.startswith("at-")]
            if page.next_cursor is None:
                return seen
            cursor = page.next_cursor

    assert await at(a1.ts) == [a1.version_key]
    assert await at(b1.ts) == [b1.version_key, a1.version_key]
    assert await at(a2.ts) == [a2.version_key, b1.version_key]
    assert await at(a3.ts + 10) == [a3.version_key, b1.version_key]


async def test_write_all_undoes_applied_changes_when_a_later_one_fails(stores) -> None:
    mine, _ = stores
    a1 = await mine.write(_version("tx-a", 1, b'{"a":1}'), base=None)
    taken = await mine.write(_version("tx-b", 1, b'{"b":1}'), base=None)
    a2 = _version("tx-a", 2, b'{"a":2}')
    clash = _version("tx-b", 1, b'{"b":"mine"}')  # "create" of a resource that exists: fails at commit
    with pytest.raises(VersionConflict):
        await mine.write_all([(a2, a1), (clash, None)])
    assert (await mine.current("Basic", "tx-a")) == a1  # the applied update was undone
    assert (await mine.current("Basic", "tx-b")) == taken
    assert await mine.history.find_one({"_id": a1.version_key}) is None  # and its claim released
    a2b = await mine.write(_version("tx-a", 2, b'{"a":"2b"}'), base=a1)  # so the next writer is not blocked
    assert (await mine.current("Basic", "tx-a")) == a2b


async def test_write_all_releases_claims_when_one_cannot_be_taken(stores) -> None:
    mine, other = stores
    x1 = await mine.write(_version("tx-x", 1), base=None)
    y1 = await mine.write(_version("tx-y", 1), base=None)
    await _dead_claim(other, y1)  # another instance is writing tx-y right now
    with pytest.raises(VersionConflict):
        await mine.write_all([(_version("tx-x", 2), x1), (_version("tx-y", 2), y1)])
    assert await mine.history.find_one({"_id": x1.version_key}) is None
    assert (await mine.current("Basic", "tx-x")) == x1


async def test_recover_undoes_a_transaction_cut_off_mid_commit(stores, store_uri: str) -> None:
    """The process dies after applying part of a transaction: the next start of the same instance undoes it."""
    mine, _ = stores
    a1 = await mine.write(_version("cut-a", 1, b'{"a":1}'), base=None)
    b1 = await mine.write(_version("cut-b", 1, b'{"b":1}'), base=None)
    a1 = await mine.current("Basic", "cut-a", with_index=True)
    b1 = await mine.current("Basic", "cut-b", with_index=True)
    changes = [(_version("cut-new", 1, b'{"c":1}'), None), (_version("cut-a", 2, b'{"a":2}'), a1),
               (_version("cut-b", 2, b'{"b":2}'), b1)]
    await mine._prepare_all(changes)
    applied: list = []
    await mine._apply_from(changes, 0, applied)  # the create
    await mine._apply_from(changes, 1, applied)  # the update of a; then the process is killed
    assert (await mine.current("Basic", "cut-a")).vid == 2  # half of the transaction is visible now

    restarted = ResourceStore(mine.db, owner=mine.owner, lease_seconds=60)
    undone, _ = await restarted.recover()
    assert undone == 1
    assert await restarted.current("Basic", "cut-new") is None
    assert (await restarted.current("Basic", "cut-a")).body == b'{"a":1}'
    assert (await restarted.current("Basic", "cut-b")) == b1
    assert await restarted.history.count_documents({"i": {"$in": ["cut-a", "cut-b"]}}) == 0  # claims released
    assert await restarted.journal.count_documents({}) == 0
    a2 = await restarted.write(_version("cut-a", 2, b'{"a":"again"}'), base=a1)  # writable at once
    assert (await restarted.current("Basic", "cut-a")) == a2


async def test_a_lease_lock_is_taken_in_turn_within_a_process_and_polled_across_processes(stores) -> None:
    """Requests of one process wait for a lock in the order they came (its asyncio queue), and only the first of
    them polls the store while another process holds it; every one gets it, none at once with another, and the
    queue is gone afterwards. A lock held elsewhere beyond the wait is ``LockBusy``."""
    a, b = stores
    name = f"Patient|criteria|{uuid.uuid4().hex}"
    order: list[int] = []
    holding = 0

    async def take(n: int) -> None:
        nonlocal holding
        async with a.lock(name):
            holding += 1
            assert holding == 1, "two holders at once"
            order.append(n)
            await asyncio.sleep(0.005)
            holding -= 1

    async with b.lock(name):  # another process holds it while these queue up
        tasks = [asyncio.create_task(take(n)) for n in range(8)]
        await asyncio.sleep(0.1)
        assert order == [] and a._lock_queues[name][1] == 8
    await asyncio.gather(*tasks)
    assert order == list(range(8))  # first come, first served
    assert name not in a._lock_queues
    async with b.lock(name):
        with pytest.raises(LockBusy):
            async with a.lock(name, wait_seconds=0.2):
                pass
    assert name not in a._lock_queues
