"""The embedded FerretDB as the project builds it: lookups, ranges and $in on _id go through the _id index."""

from __future__ import annotations

import uuid

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import AutoReconnect


async def test_id_lookups_and_ranges_use_the_index(store_uri: str) -> None:
    client: AsyncMongoClient = AsyncMongoClient(store_uri)
    coll = client[f"idx{uuid.uuid4().hex[:8]}"]["entries"]
    try:
        await coll.insert_many([{"_id": f"Patient|family|{name.encode().hex()}|{i:04d}"}
                                for i, name in enumerate(["wang", "wangfang", "li", "liu", "王", "王小东"] * 50)])
        plan = await coll.database.command("explain", {"find": "entries", "filter": {"_id": "x"}})
        assert "USING INDEX" in plan["queryPlanner"]["Plan"][-1]  # equality: patched to match the index
        low = f"Patient|family|{b'wang'.hex()}"
        ranged = {"_id": {"$gte": low, "$lt": low + "~"}}
        plan = await coll.database.command("explain", {"find": "entries", "filter": ranged})
        assert "USING INDEX" in plan["queryPlanner"]["Plan"][-1] and plan["filterPushdown"] is True
        found = [d["_id"] async for d in coll.find(ranged)]
        assert len(found) == 100  # wang and wangfang, 50 each: a prefix match
        chinese = f"Patient|family|{'王'.encode().hex()}"
        assert len([d async for d in coll.find({"_id": {"$gte": chinese, "$lt": chinese + "~"}})]) == 100
        exact = f"Patient|family|{b'li'.hex()}|"
        assert len([d async for d in coll.find({"_id": {"$gt": exact, "$lt": exact + "~"}})]) == 50
        wanted = [f"Patient|family|{b'li'.hex()}|{i:04d}" for i in (2, 8, 14)]
        plan = await coll.database.command("explain", {"find": "entries", "filter": {"_id": {"$in": wanted}}})
        assert "USING INDEX" in plan["queryPlanner"]["Plan"][-1] and plan["filterPushdown"] is True
        assert sorted([d["_id"] async for d in coll.find({"_id": {"$in": [*wanted, "absent"]}})]) == wanted
        # ordered and limited by SQLite when sorted by _id: the first keys of the range, in order, either way
        every = sorted([d["_id"] async for d in coll.find(ranged)])
        first = [d["_id"] async for d in coll.find(ranged).sort("_id", 1).limit(7)]
        last = [d["_id"] async for d in coll.find(ranged).sort("_id", -1).limit(7)]
        assert first == every[:7] and last == every[::-1][:7]
        after = [d["_id"] async for d in coll.find({"_id": {"$gt": every[40], "$lt": low + "~"}}).sort("_id", 1)
                 .limit(5)]
        assert after == every[41:46]
    finally:
        await client.drop_database(coll.database.name)
        await client.close()


async def test_documents_come_back_as_stored_and_nan_is_refused(store_uri: str) -> None:
    """Patched: finds without a projection return stored documents as they are (not copied), NaNs are refused as
    requests are read (not by decoding every reply again)."""
    client: AsyncMongoClient = AsyncMongoClient(store_uri)
    coll = client[f"nan{uuid.uuid4().hex[:8]}"]["docs"]
    try:
        doc = {"t": "Patient", "i": "p1", "v": 3, "ts": 1795654361141989, "j": b'{"resourceType":"Patient"}',
               "ix": "name|77616e67.|1 birthdate|L8.9|2", "nested": {"b": [1, {"c": 2.5}], "a": None}}
        await coll.insert_one({**doc, "_id": "Patient/p1"})  # _id last in the request, first when stored
        found = await coll.find_one({"_id": "Patient/p1"})
        assert found is not None and list(found) == ["_id", *doc] and found == {"_id": "Patient/p1", **doc}
        projected = await coll.find_one({"_id": "Patient/p1"}, {"ix": 1, "v": 1})
        assert projected == {"_id": "Patient/p1", "v": 3, "ix": doc["ix"]}
        with pytest.raises(AutoReconnect):  # the request with a NaN ends its connection, as before the patch
            await coll.insert_one({"_id": "Patient/p2", "value": {"x": [1.0, float("nan")]}})
        assert await coll.count_documents({}) == 1  # nothing of it stored; the client reconnects
    finally:
        await client.drop_database(coll.database.name)
        await client.close()
