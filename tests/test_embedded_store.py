"""The embedded FerretDB as the project builds it: lookups, ranges and $in on _id go through the _id index."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient, MongoClient
from pymongo.errors import AutoReconnect, DuplicateKeyError

from fhir_server.embedded_store import EmbeddedStore, free_port
from fhir_server.model.types import SUPPORTED_TYPES
from fhir_server.search.keys import lacks_listed
from fhir_server.search.query import parse_search
from fhir_server.search.registry import parameters_for
from fhir_server.storage.versions import substring_pattern
from tests.conftest import fresh_store


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


async def test_ids_compare_as_strings_not_as_their_json_text(store_uri: str) -> None:
    """Patched (ferretdb-unquoted-id-index): the _id index holds the SQL value of _id, so ranges, order and limits
    pushed down to SQLite go by the strings' UTF-8 bytes, as MongoDB's do. On the JSON text, ``<`` (stored as
    ``\\u003c``), ``"`` and ``\\`` sorted after every other character: the last key of a range came out first."""
    client: AsyncMongoClient = AsyncMongoClient(store_uri)
    coll = client[f"txt{uuid.uuid4().hex[:8]}"]["entries"]
    try:
        ids = [f"k{c}{i}" for c in ';<=>"\\a&' for i in range(3)] + ["k\u00e9", "k\u738b", "j", "l"]
        await coll.insert_many([{"_id": i} for i in ids])
        within = sorted((i for i in ids if "k" <= i < "l"), key=lambda i: i.encode())
        ranged = {"_id": {"$gte": "k", "$lt": "l"}}
        plan = await coll.database.command("explain", {"find": "entries", "filter": ranged, "sort": {"_id": -1},
                                                       "limit": 3})
        assert plan["filterPushdown"] is True and "USING INDEX" in plan["queryPlanner"]["Plan"][-1]
        assert [d["_id"] async for d in coll.find(ranged).sort("_id", 1).limit(4)] == within[:4]
        assert [d["_id"] async for d in coll.find(ranged).sort("_id", -1).limit(4)] == within[::-1][:4]
        assert [d["_id"] async for d in coll.find({"_id": {"$gt": "k<2", "$lt": "k>"}}).sort("_id", 1)] == [
            "k=0", "k=1", "k=2"]
        assert [d["_id"] async for d in coll.find({"_id": {"$in": ['k"1', "k\\2", "k<0"]}}).sort("_id", 1)] == [
            'k"1', "k<0", "k\\2"]
        assert await coll.find_one({"_id": "k&1"}) == {"_id": "k&1"}
        await coll.delete_one({"_id": "k<1"})
        await coll.replace_one({"_id": "k>1"}, {"x": 1})
        assert await coll.find_one({"_id": "k>1"}) == {"_id": "k>1", "x": 1}
        assert await coll.count_documents({"_id": {"$gte": "k<", "$lt": "k="}}) == 2
    finally:
        await client.drop_database(coll.database.name)
        await client.close()


async def test_ids_of_other_types_are_found_replaced_and_deleted(store_uri: str) -> None:
    """Patched (ferretdb-unquoted-id-index): lookups, replaces and deletes by an ``_id`` that is not a string take
    the value to the SQL value its stored JSON gives, so they find it: numbers, ObjectIds, documents (with
    characters JSON escapes), dates. Two ``_id``s of different types with one SQL value are one (the patch's limit:
    ``true`` after ``1`` is a duplicate)."""
    client: AsyncMongoClient = AsyncMongoClient(store_uri)
    coll = client[f"typ{uuid.uuid4().hex[:8]}"]["entries"]
    try:
        day = datetime(2026, 11, 27)  # naive: PyMongo reads dates back so (in UTC)
        ids: list[Any] = [7, 2.5, ObjectId(), {"k": "<v>&\"w\""}, day, "7"]
        await coll.insert_many([{"_id": i, "n": n} for n, i in enumerate(ids)])
        for n, i in enumerate(ids):
            assert await coll.find_one({"_id": i}) == {"_id": i, "n": n}
            assert (await coll.replace_one({"_id": i}, {"n": n + 10})).modified_count == 1
        assert sorted([d["n"] async for d in coll.find({"_id": {"$in": ["7", "8"]}})]) == [15]
        for i in ids[:3]:
            assert (await coll.delete_one({"_id": i})).deleted_count == 1
        assert sorted([d["n"] async for d in coll.find({})]) == [13, 14, 15]
        await coll.insert_one({"_id": 1})
        with pytest.raises(DuplicateKeyError):
            await coll.insert_one({"_id": True})
    finally:
        await client.drop_database(coll.database.name)
        await client.close()


def test_a_store_made_before_the_unquoted_id_index_gets_it_at_start(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A store whose ``_id`` index is on the JSON text (FerretDB before ferretdb-unquoted-id-index): FerretDB
    rebuilds it before it listens, and the hub's start waits for that past its timeout and says so; the
    documents are then found by ``_id`` through the new index."""
    store = EmbeddedStore(data_dir=tmp_path, port=free_port())
    store.start()
    client: MongoClient = MongoClient(store.uri)
    client["medunion"]["things"].insert_one({"_id": "k0000000"})
    client.close()
    store.stop()
    with sqlite3.connect(tmp_path / "sqlite" / "medunion.sqlite") as db:  # as the FerretDB before made it
        (table,) = db.execute("SELECT table_name FROM _ferretdb_collections WHERE name = 'things'").fetchone()
        db.execute(f'DROP INDEX "{table}__id_"')
        db.execute(f'CREATE UNIQUE INDEX "{table}__id_" ON "{table}" (_ferretdb_sjson->"_id")')
        schema = '{"$s":{"p":{"_id":{"t":"string"}},"$k":["_id"]},"_id":"%s"}'
        db.executemany(f'INSERT INTO "{table}" VALUES (?)', ((schema % f"k{i:07d}",) for i in range(1, 2_000_000)))
    capsys.readouterr()
    store.start(timeout=0.5)  # rebuilding 2,000,000 rows takes longer (start: ~3.9 s here)
    try:
        assert "rebuilding the store's _id indexes" in capsys.readouterr().err
        with sqlite3.connect(tmp_path / "sqlite" / "medunion.sqlite") as db:
            (made,) = db.execute("SELECT sql FROM sqlite_master WHERE name = ?", (f"{table}__id_",)).fetchone()
        assert made.endswith("(_ferretdb_sjson->>'_id')")
        client = MongoClient(store.uri)
        things = client["medunion"]["things"]
        plan = things.database.command("explain", {"find": "things", "filter": {"_id": "k0123456"}})
        assert "USING INDEX" in plan["queryPlanner"]["Plan"][-1]
        assert things.find_one({"_id": "k0123456"}) == {"_id": "k0123456"}
        assert [d["_id"] for d in things.find({"_id": {"$gt": "k1999997"}}).sort("_id", 1)] == ["k1999998",
                                                                                              "k1999999"]
        client.close()
    finally:
        store.stop()


async def test_a_union_of_id_ranges_reads_each_range_by_the_index(store_uri: str) -> None:
    """Patched: {$or: [{_id: <range>}, ...]} sorted by _id and limited (the hub's shared index scans) is each range
    read by the _id index, and returns what the filter, sort and limit ask for: overlapping ranges give a key
    once, a large range is cut at the limit, either order."""
    client: AsyncMongoClient = AsyncMongoClient(store_uri)
    coll = client[f"union{uuid.uuid4().hex[:8]}"]["entries"]
    try:
        await coll.insert_many([{"_id": f"Observation|{param}|{v:03d}|o{i}|1"}
                                for param, values in (("code", 40), ("status", 2), ("subject", 60))
                                for v in range(values) for i in range(3 if param != "status" else 200)])
        every = sorted([d["_id"] async for d in coll.find({})])
        ranges = [("Observation|code|005|", "Observation|code|005|~"),  # 3 keys
                  ("Observation|code|005|o1", "Observation|code|007|"),  # overlaps the first
                  ("Observation|status|", "Observation|status|~"),  # 400 keys
                  ("Observation|subject|058|", "Observation|subject|~"),  # the last 6
                  ("Observation|subject|x", "Observation|subject|~")]  # none
        union = {"$or": [{"_id": {"$gte": low, "$lt": high}} for low, high in ranges]}
        matching = [k for k in every if any(low <= k < high for low, high in ranges)]
        for order, limit in ((1, 20), (-1, 20), (1, 1000), (-1, 7)):
            plan = await coll.database.command("explain", {"find": "entries", "filter": union,
                                                           "sort": {"_id": order}, "limit": limit})
            steps = plan["queryPlanner"]["Plan"]
            assert plan["filterPushdown"] is True and not any("SCAN entries" in s for s in steps)
            assert sum("USING INDEX" in s for s in steps) == len(ranges)
            found = [d["_id"] async for d in coll.find(union).sort("_id", order).limit(limit)]
            assert found == (matching if order == 1 else matching[::-1])[:limit]
        after = {"$or": [{"_id": {"$gt": "Observation|code|005|o0|1", "$lt": "Observation|code|006|"}},
                         {"_id": {"$gte": "Observation|subject|059|", "$lte": "Observation|subject|059|o1|1"}}]}
        assert [d["_id"] async for d in coll.find(after).sort("_id", 1).limit(10)] == [
            "Observation|code|005|o1|1", "Observation|code|005|o2|1",
            "Observation|subject|059|o0|1", "Observation|subject|059|o1|1"]
        # not sorted by _id, or without a limit: not this query (FerretDB filters what it reads, as before)
        plan = await coll.database.command("explain", {"find": "entries", "filter": union})
        assert plan["filterPushdown"] is False
        assert sorted([d["_id"] async for d in coll.find(union)]) == matching
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

async def test_a_range_that_leaves_out_a_substring_is_read_by_the_index(store_uri: str) -> None:
    """Patched (ferretdb-sqlite-id-without-substring): {_id: {<range>, $not: {$regex: <literals>}}} (a sort's walk
    leaving out the keys it passes over) is the range read by the _id index, and the reply is every key of the
    range without the literals, in order and limited, also where a literal occurs in the stored row's other
    text (its schema: tested on _id); the store says it can (``leaves_out_in_index``) and its scans do it."""
    async with fresh_store(store_uri, owner="leave-out-test") as store:
        coll = store.search_index
        await coll.insert_many([{"_id": f"Patient|family|{i:03d}.|p{i:04d}|{i % 4 + 1}{marks}"}
                                for i in range(200) for marks in [("", "^a", "^d", "^a^d")[i % 4]]])
        every = sorted([d["_id"] async for d in coll.find({})])
        high = "Patient|family|~"
        for pattern, left_out in ((r"\^a", ("^a",)), (r"\^d", ("^d",)), (r"\^a|\^d", ("^a", "^d")),
                                  ("string", ("string",)), ("zzz", ("zzz",))):
            kept = [k for k in every if k > every[10] and not any(t in k for t in left_out)]
            ranged = {"_id": {"$gt": every[10], "$lt": high, "$not": {"$regex": pattern}}}
            for order, limit in ((1, 10), (-1, 10), (1, 1000)):
                plan = await coll.database.command("explain", {"find": coll.name, "filter": ranged,
                                                               "sort": {"_id": order}, "limit": limit})
                assert plan["filterPushdown"] is True and "USING INDEX" in plan["queryPlanner"]["Plan"][-1]
                found = [d["_id"] async for d in coll.find(ranged).sort("_id", order).limit(limit)]
                assert found == (kept if order == 1 else kept[::-1])[:limit], pattern
        assert await store.leaves_out_in_index()
        for mark in ("^a", "^d"):
            assert await store.scan_index("Patient", "family|", "family|~", after=every[10], limit=1000,
                                          without=mark) == [k for k in every if k > every[10] and mark not in k]


async def test_a_substring_filter_on_an_id_range_is_read_by_the_index(store_uri: str) -> None:
    """Patched (ferretdb-sqlite-id-substring): {_id: {<range>, $regex: <literals>}} (the hub's substring scans) is
    the range read by the _id index with the literals tested by SQLite, alone and in a union of ranges; the
    reply is what the regular expression selects, in order and limited, even where a literal also occurs in the
    stored row's other text (its schema), and a pattern that is not literals is still answered right."""
    client: AsyncMongoClient = AsyncMongoClient(store_uri)
    coll = client[f"sub{uuid.uuid4().hex[:8]}"]["entries"]
    try:
        names = ["wang", "wangfang", "li", "liu", "王小东", "huang.string"]
        await coll.insert_many([{"_id": f"Patient|name|{name.encode().hex()}.{i % 3}|p{i:04d}|1"}
                                for i in range(300) for name in [names[i % len(names)]]])
        every = sorted([d["_id"] async for d in coll.find({})])
        low, high = "Patient|name|", "Patient|name|~"
        for pattern, wanted in (("616e67", ("616e67",)),  # "ang": wang, wangfang, huang
                                ("6c69|e5b08f", ("6c69", "e5b08f")),  # "li" (li, liu) or 小
                                (r"\.2\|", (".2|",)),  # the literal "." and "|" of a token's system
                                ("string", ("string",)),  # in every row's schema, in no key
                                ("7a7a7a", ("7a7a7a",))):  # nothing
            matching = [k for k in every if any(t in k for t in wanted)]
            ranged = {"_id": {"$gte": low, "$lt": high, "$regex": pattern}}
            for order, limit in ((1, 10), (-1, 10), (1, 1000)):
                plan = await coll.database.command("explain", {"find": "entries", "filter": ranged,
                                                               "sort": {"_id": order}, "limit": limit})
                assert plan["filterPushdown"] is True and "USING INDEX" in plan["queryPlanner"]["Plan"][-1]
                found = [d["_id"] async for d in coll.find(ranged).sort("_id", order).limit(limit)]
                assert found == (matching if order == 1 else matching[::-1])[:limit], pattern
            li, wang = f"Patient|name|{b'li'.hex()}~", f"Patient|name|{b'wang'.hex()}"
            union = {"$or": [{"_id": {"$gte": low, "$lt": li, "$regex": pattern}},
                             {"_id": {"$gte": wang, "$lt": high, "$regex": pattern}}]}
            plan = await coll.database.command("explain", {"find": "entries", "filter": union,
                                                           "sort": {"_id": 1}, "limit": 50})
            assert plan["filterPushdown"] is True and not any("SCAN entries" in s for s in plan["queryPlanner"]["Plan"])
            in_union = [k for k in matching if k < li or k >= wang]
            assert [d["_id"] async for d in coll.find(union).sort("_id", 1).limit(50)] == in_union[:50]
        # a regular expression that is not literals: FerretDB filters what it reads, as before
        anchored = {"_id": {"$gte": low, "$lt": high, "$regex": "^Patient\\|name\\|6c"}}
        plan = await coll.database.command("explain", {"find": "entries", "filter": anchored})
        assert plan["filterPushdown"] is False
        assert [d["_id"] async for d in coll.find(anchored).sort("_id", 1)] == [
            k for k in every if k.startswith("Patient|name|6c")]
    finally:
        await client.drop_database(coll.database.name)
        await client.close()


async def test_every_substring_scan_a_search_makes_is_read_by_the_index(store_uri: str) -> None:
    """The substring scans the query builder asks for (``:missing=true`` on each parameter named in ``@lacks``
    entries, of every type; ``:contains``; a token's ``system|``; ``_content``; ``:text``) are patterns the hub's
    FerretDB patch reads by the ``_id`` index: a character it does not take (the ``,`` the first ``@lacks`` entries
    had) made it scan the whole collection, 28 s for one page on the benchmark's store, while the answers stayed
    right. And a key holding the text is found."""
    zone = ZoneInfo("Asia/Shanghai")
    searches = [(rtype, [(f"{code}:missing", "true")]) for rtype in sorted(SUPPORTED_TYPES)
                for code, parameter in parameters_for(rtype).items() if lacks_listed(code, parameter)]
    searches += [("Patient", [("name:contains", "王小")]), ("Patient", [("identifier", "urn:oid:2.16.156|")]),
                 ("Patient", [("_content", "wang")]), ("ServiceRequest", [("code:text", "chest ct")])]
    scans: dict[str, tuple[str, str, tuple[str, ...]]] = {}  # a pattern: one span that asks for it
    for rtype, pairs in searches:
        for clause in parse_search(rtype, pairs, zone=zone, base_url="http://127.0.0.1/fhir").clauses:
            for span in clause.keys.spans if clause.keys is not None else ():
                if span.containing:
                    scans.setdefault(substring_pattern(span.containing), (rtype, span.low, span.high))
    assert len(scans) > 50 and r"\.organization\." in scans and r"\.general\-practitioner\." in scans
    async with fresh_store(store_uri, owner="substring-scans-test") as store:
        key = "Patient|@lacks|._profile._tag.general-practitioner.link.organization.|p1|1"
        await store.search_index.insert_one({"_id": key})  # the collection exists: explain shows SQLite's plan
        for pattern, (rtype, low, high) in scans.items():
            ranged = {"_id": {"$gte": f"{rtype}|{low}", "$lt": f"{rtype}|{high}", "$regex": pattern}}
            plan = await store.db.command("explain", {"find": store.search_index.name, "filter": ranged,
                                                      "sort": {"_id": 1}, "limit": 21})
            assert plan["filterPushdown"] is True and "USING INDEX" in plan["queryPlanner"]["Plan"][-1], pattern
        found = await store.scan_index("Patient", "@lacks|", "@lacks|~", after=None, limit=5,
                                       containing=(".general-practitioner.",))
        assert found == [key]
