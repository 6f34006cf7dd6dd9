"""Type and system history from their keys in ``search_index``, on the real FerretDB: the same pages as merging the two
collections by time, orphans of failed writes never shown, versions of an older store given their keys."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.storage import ResourceStore, Version, VersionConflict, now_micros
from tests.conftest import CommandCounter, fresh_store


@pytest.fixture
async def store(store_uri: str):
    filters = CommandCounter("resources", "history")
    async with fresh_store(store_uri, owner="history-test", listeners=(filters,)) as store:
        yield store, filters


def _version(rtype: str, rid: str, vid: int, *, deleted: bool = False) -> Version:
    body = None if deleted else f'{{"resourceType":"{rtype}","id":"{rid}","meta":{{"versionId":"{vid}"}}}}'.encode()
    return Version(rtype=rtype, rid=rid, vid=vid, ts=now_micros(), method="DELETE" if deleted else "PUT", body=body)


async def _write_some(store: ResourceStore) -> list[int]:
    """Creates, updates and deletes of two types, a create that loses to an earlier one and a transaction that
    is undone (their keys are orphans); returns the timestamps of the stored versions, oldest first."""
    stamps: list[int] = []
    current: dict[str, Version] = {}
    for step in range(24):
        rtype = "Basic" if step % 3 else "Patient"
        rid = f"r{step % 5}"
        base = current.get(f"{rtype}/{rid}")
        new = _version(rtype, rid, 1 if base is None else base.vid + 1, deleted=step % 7 == 6 and base is not None)
        current[new.key] = await store.write(new, base=base)
        stamps.append(new.ts)
    with pytest.raises(VersionConflict):  # created before: its change keys stay behind, naming nothing
        await store.write(_version("Patient", "r0", 1), base=None)
    a_base = current["Basic/r1"]
    with pytest.raises(VersionConflict):  # the update is applied, then undone when the create fails
        await store.write_all([(_version("Basic", "r1", a_base.vid + 1), a_base), (_version("Patient", "r0", 1), None)])
    return stamps


async def _pages(read: Any, *, rtype: str | None, since: int | None, at: int | None, count: int) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = await read(rtype=rtype, since=since, at=at, count=count, cursor=cursor)
        pages.append([f"{v.ts} {v.version_key} {v.method} {v.body!r}" for v in page.versions])
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


async def test_history_from_keys_pages_like_the_merge_of_both_collections(store) -> None:
    store, _ = store
    stamps = await _write_some(store)
    middle = stamps[len(stamps) // 2]
    checked = 0
    for rtype in (None, "Basic", "Patient", "Observation"):
        for since, at in ((None, None), (middle, None), (None, middle), (stamps[3], stamps[-4])):
            for count in (1, 4, 100):
                scanned = await _pages(store._history_scan, rtype=rtype, since=since, at=at, count=count)
                keyed = await _pages(store._history_from_keys, rtype=rtype, since=since, at=at, count=count)
                assert keyed == scanned, (rtype, since, at, count)
                checked += sum(len(p) for p in keyed)
    everything = await _pages(store._history_from_keys, rtype=None, since=None, at=None, count=100)
    assert len(everything[0]) == 24  # every stored version once; the failed create and the undone update not
    assert checked >= 300  # versions compared over all pages of all 48 combinations


async def test_backfill_gives_an_older_store_its_keys_and_history_then_reads_no_scan(store) -> None:
    store, filters = store
    await _write_some(store)
    scan_indexes = [("t_ts", [("t", 1), ("ts", -1)]), ("ts", [("ts", -1)])]
    for collection in (store.resources, store.history):
        assert set(await collection.index_information()) == {"_id_"}  # this hub creates no others there
        for name, keys in scan_indexes:  # as an older hub did
            await collection.create_index(keys, name=name)
    await store.search_index.delete_many({"_id": {"$regex": r"\|@history\|"}})  # a store an older hub wrote
    expected = await _pages(store._history_scan, rtype=None, since=None, at=None, count=5)
    assert not await store.history_keys_complete()
    assert await store.backfill_history_keys() >= 24  # current versions and superseded copies
    assert await store.history_keys_complete() and await store.backfill_history_keys() == 0
    for collection in (store.resources, store.history):  # nothing reads by them now: dropped
        assert set(await collection.index_information()) == {"_id_"}
    expected_basic = await _pages(store._history_scan, rtype="Basic", since=None, at=None, count=3)
    filters.filters.clear()
    assert await _pages(store.history_page, rtype=None, since=None, at=None, count=5) == expected
    assert await _pages(store.history_page, rtype="Basic", since=None, at=None, count=3) == expected_basic
    # the keys path: every find on the two collections is by _id (the scan path filters on t and ts)
    assert filters.filters and all(set(f) == {"_id"} for f in filters.filters)
