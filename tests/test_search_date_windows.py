"""Date ranges bounded on both sides (``birthdate=ge1960-01-01&birthdate=le1960-12-31``), on the real FerretDB.

Each clause alone holds a large part of the type; together they read a window of the date's entries, bounded below
by the longest span of the parameter's values (search/date_spans.py). The oracle is the searches of each clause
alone (a path the window does not touch), intersected: FHIR's AND. The cost is the resources the search reads.
"""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from typing import Any

from fhir_server.auth.scopes import Principal, parse_scopes
from fhir_server.search.date_spans import UNBOUNDED, WINDOWED_SPAN
from fhir_server.search.keys import INDEX_LAYOUT, LAYOUT_MARKER, SPANS_LAYOUT
from fhir_server.service.reindex import Reindexer
from fhir_server.service.resources import ResourceService
from fhir_server.settings import Settings
from fhir_server.storage import ResourceStore
from tests.conftest import CommandCounter, fresh_store

ADMIN = Principal(subject="window-test", grants=parse_scopes("system/*.cruds"))

# two-sided ranges of every prefix that bounds a side, and some that bound one side only (no window)
RANGES = [
    ("ge1960-01-01", "le1960-12-31"), ("gt1960-01-01", "lt1961-01-01"), ("ge1960-06", "lt1961"),
    ("ge1961-02-15", "le1961-02-15"), ("sa1959-12-31", "eb1961-01-01"), ("ge1958", "le1958"),
    ("gt1962-03-01T12:00:00+08:00", "le1962-03-10"), ("eq1960", "ge1960-03-01"), ("ge1963-01-01", "le1962-01-01"),
    ("ge1960-01-01", "ne1960-05-05"), ("ap1960-05-05", "le1961-01-01"), ("ge1959-07-01", "le1961-06-30", "gt1960"),
]


async def _ids(service: ResourceService, rtype: str, pairs: list[tuple[str, str]], count: int = 1000) -> list[str]:
    """Every match, page after page."""
    out: list[str] = []
    cursor = None
    while True:
        _, page = await service.search(principal=ADMIN, rtype=rtype, pairs=pairs, count=count, cursor=cursor)
        out += [v.rid for v in page.matches]
        if (cursor := page.next_cursor) is None:
            return out


async def _read(service: ResourceService, finds: CommandCounter, rtype: str, pairs: list[tuple[str, str]]
                ) -> tuple[set[str], int]:
    """The matches, and how many resources the search read."""
    before = len(finds.filters)
    found = await _ids(service, rtype, pairs)
    return set(found), sum(len(f.get("_id", {}).get("$in", [])) for f in finds.filters[before:])


def _birth(n: int) -> str:
    """Days 1958–1963 every 11 days; every tenth Patient a month, every fifteenth a year."""
    year, day = 1958 + n // 34, n % 34 * 11 % 365
    month, mday = 1 + day // 31 % 12, 1 + day % 28
    if n % 15 == 0:
        return f"{year}"
    if n % 10 == 0:
        return f"{year}-{month:02d}"
    return f"{year}-{month:02d}-{mday:02d}"


async def test_two_sided_date_ranges_read_their_window_and_match_as_each_clause_alone(store_uri: str) -> None:
    finds = CommandCounter("resources")
    async with fresh_store(store_uri, owner="window-test", listeners=(finds,)) as store:
        await store.db["jobs"].insert_one({"_id": LAYOUT_MARKER, "layout": INDEX_LAYOUT})  # as on a hub's new store
        service = ResourceService(store=store, settings=Settings())
        for n in range(200):
            await service.create(principal=ADMIN, rtype="Patient", resource={
                "resourceType": "Patient", "birthDate": _birth(n), "name": [{"family": f"F{n}"}]})
        assert (await store.db["date_spans"].find_one({"_id": "Patient|birthdate"}) or {})["d"] >= 365 * 86_400_000_000
        for ranged in RANGES:
            pairs = [("birthdate", v) for v in ranged]
            alone = [set(await _ids(service, "Patient", [pair])) for pair in pairs]
            expected = set.intersection(*alone)
            found, read = await _read(service, finds, "Patient", pairs)
            assert found == expected, ranged
            paged = await _ids(service, "Patient", pairs, count=3)  # the window's cursor, page after page
            assert sorted(paged) == sorted(expected) and len(paged) == len(set(paged)), ranged
            one_sided = all(v[:2] in ("ge", "gt", "le", "lt", "sa", "eb") for v in ranged)
            if one_sided:  # each clause alone reads ~half of the 200 Patients; the window its matches (few orphans)
                assert read <= len(expected) + 2, (ranged, read, len(expected))
        one_sided = [("birthdate", "ge1960-01-01"), ("birthdate", "ge1961-01-01")]  # no window: still right
        assert set(await _ids(service, "Patient", one_sided)) == set(await _ids(service, "Patient", one_sided[1:]))


async def test_a_value_longer_than_any_this_process_knew_of_is_found_by_another(store_uri: str) -> None:
    """Two hub processes on one store (two services, each with its own memory of the spans): after one has
    searched with days only, the other stores a birth year; the first finds it in a window of a month of that
    year (it reads the longest span from the store for each search; it did not, it would start the window a day
    before the month)."""
    async with fresh_store(store_uri, owner="window-a") as store_a:
        store_b = ResourceStore(store_a.db, owner="window-b", lease_seconds=60)
        await store_a.db["jobs"].insert_one({"_id": LAYOUT_MARKER, "layout": INDEX_LAYOUT})
        first, second = ResourceService(store=store_a, settings=Settings()), ResourceService(store=store_b,
                                                                                         settings=Settings())
        for day in range(1, 29):
            await first.create(principal=ADMIN, rtype="Patient", resource={
                "resourceType": "Patient", "birthDate": f"1975-06-{day:02d}"})
        june = [("birthdate", "ge1975-06-10"), ("birthdate", "le1975-06-12")]
        assert len(await _ids(first, "Patient", june)) == 3
        year = await second.create(principal=ADMIN, rtype="Patient", resource={
            "resourceType": "Patient", "birthDate": "1975"})
        assert year.version.rid in await _ids(first, "Patient", june)


async def test_several_values_of_a_date_in_one_resource_are_searched_without_a_window(store_uri: str) -> None:
    """A Goal with two targets, due 2020 and 2030: ``target-date=ge2025-01-01&target-date=le2021-01-01`` matches it
    (each clause by another value; no window holds one value meeting both). Its write marks the parameter
    unbounded, so the search reads both clauses as before."""
    async with fresh_store(store_uri, owner="window-goal") as store:
        await store.db["jobs"].insert_one({"_id": LAYOUT_MARKER, "layout": INDEX_LAYOUT})
        service = ResourceService(store=store, settings=Settings())
        subject = {"reference": "Patient/p1"}
        single = await service.create(principal=ADMIN, rtype="Goal", resource={
            "resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "weight"},
            "subject": subject, "target": [{"dueDate": "2026-03-01"}]})
        assert await _ids(service, "Goal", [("target-date", "ge2026-01-01"), ("target-date", "le2026-12-31")]) == [
            single.version.rid]
        both = await service.create(principal=ADMIN, rtype="Goal", resource={
            "resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "ECOG 1"},
            "subject": subject, "target": [{"dueDate": "2020-01-01"}, {"dueDate": "2030-01-01"}]})
        assert (await store.db["date_spans"].find_one({"_id": "Goal|target-date"}) or {})["d"] == UNBOUNDED
        found = await _ids(service, "Goal", [("target-date", "ge2025-01-01"), ("target-date", "le2021-01-01")])
        assert found == [both.version.rid]


async def test_a_parameter_with_values_longer_than_a_year_is_read_by_its_clauses(store_uri: str) -> None:
    """Observations whose effective periods last two years: a window would start two years before the range and
    read more than the ``gt`` clause, so the clauses drive as they did; the matches are the same either way."""
    async with fresh_store(store_uri, owner="window-long") as store:
        await store.db["jobs"].insert_one({"_id": LAYOUT_MARKER, "layout": INDEX_LAYOUT})
        service = ResourceService(store=store, settings=Settings())
        for year in range(2000, 2026):
            await service.create(principal=ADMIN, rtype="Observation", resource={
                "resourceType": "Observation", "status": "final", "code": {"text": "smoking status"},
                "effectivePeriod": {"start": f"{year}-01-01", "end": f"{year + 1}-12-31"}})
        assert (await store.db["date_spans"].find_one({"_id": "Observation|date"}) or {})["d"] > WINDOWED_SPAN
        pairs = [("date", "gt2010-06-01"), ("date", "lt2012-01-01")]
        query = service.parse("Observation", pairs)
        clauses = await service.engine._resolve(query)
        assert [c.drives for c in clauses] == [False, True, True]  # a place kept, and the two clauses
        expected = set.intersection(*[set(await _ids(service, "Observation", [p])) for p in pairs])
        assert set(await _ids(service, "Observation", pairs)) == expected and len(expected) == 3


def _from_the_first_date(filters: list[dict[str, Any]]) -> bool:
    """Whether one of the index scans ``filters`` read the birth dates' ``L`` keys from the first one on."""
    return any(bounds.get("_id", {}).get("$gte") == "Patient|birthdate|L"
               for f in filters for bounds in f.get("$or", [f]))


async def test_an_upgraded_store_learns_the_spans_of_what_it_held_before(store_uri: str) -> None:
    """A store whose resources were written before the spans were kept (layout 14: no ``date_spans``) is searched
    without windows until its upgrade job has passed every resource through the same check; then with them: the
    ``le`` clause's keys no longer scanned from the first birth date on, one scan of the window read instead."""
    finds, scans = CommandCounter("resources"), CommandCounter("search_index")
    async with fresh_store(store_uri, owner="window-upgrade", listeners=(finds, scans)) as store:
        await store.db["jobs"].insert_one({"_id": LAYOUT_MARKER, "layout": INDEX_LAYOUT})
        service = ResourceService(store=store, settings=Settings())
        for n in range(60):
            await service.create(principal=ADMIN, rtype="Patient", resource={
                "resourceType": "Patient", "birthDate": _birth(n)})
        await store.db["date_spans"].drop()  # as a hub of layout 14 left it
        await store.db["jobs"].replace_one({"_id": LAYOUT_MARKER}, {"_id": LAYOUT_MARKER, "layout": SPANS_LAYOUT - 1})
        pairs = [("birthdate", "ge1959-01-01"), ("birthdate", "le1959-03-31")]
        expected = set.intersection(*[set(await _ids(service, "Patient", [p])) for p in pairs])
        before = ResourceService(store=store, settings=Settings())
        scanned = scans.count
        found, read = await _read(before, finds, "Patient", pairs)
        assert found == expected and _from_the_first_date(scans.filters[scanned:])  # no window yet: both probed
        reindexer = Reindexer(resources=before, settings=Settings())
        assert await reindexer.upgrade() is not None
        await asyncio.gather(*reindexer._tasks)
        marker: dict[str, Any] = await store.db["jobs"].find_one({"_id": LAYOUT_MARKER}) or {}
        assert marker["layout"] == INDEX_LAYOUT
        assert (await store.db["date_spans"].find_one({"_id": "Patient|birthdate"}) or {})["d"] > 0
        after = ResourceService(store=store, settings=Settings())  # (an instance asks for the layout every 5 s)
        scanned = scans.count
        found, read = await _read(after, finds, "Patient", pairs)
        assert found == expected and read <= len(expected) + 2
        assert scans.count - scanned == 1 and not _from_the_first_date(scans.filters[scanned:])


async def test_ap_alone_reads_a_window_of_its_own(store_uri: str) -> None:
    """``ap`` bounds both sides (the value widened by a tenth of its distance from now): its page reads the keys
    from the window's start, where it walked the date's keys from the type's first one."""
    scans = CommandCounter("search_index")
    async with fresh_store(store_uri, owner="window-ap", listeners=(scans,)) as store:
        await store.db["jobs"].insert_one({"_id": LAYOUT_MARKER, "layout": INDEX_LAYOUT})
        service = ResourceService(store=store, settings=Settings())
        for n in range(300):  # 200 born long ago, then one a week since 2025; all to the day (the longest span)
            born = str(date(1958 + n // 40, 1 + n % 12, 1 + n % 28) if n < 200 else
                       date(2025, 1, 1) + timedelta(days=7 * (n - 200)))
            await service.create(principal=ADMIN, rtype="Patient", resource={"resourceType": "Patient",
                                                                              "birthDate": born})
        near = [("birthdate", f"ap{date.today() - timedelta(days=300)}")]  # ± a month
        everything = set(await _ids(service, "Patient", near))
        before = len(scans.filters)
        _, page = await service.search(principal=ADMIN, rtype="Patient", pairs=near, count=3, cursor=None)
        assert len(page.matches) == 3 and len(scans.filters) - before == 1
        await store.db["jobs"].replace_one({"_id": LAYOUT_MARKER}, {"_id": LAYOUT_MARKER, "layout": SPANS_LAYOUT - 1})
        plain = ResourceService(store=store, settings=Settings())  # no windows below layout 15
        assert set(await _ids(plain, "Patient", near)) == everything and 5 < len(everything) < 20
        before = len(scans.filters)
        await plain.search(principal=ADMIN, rtype="Patient", pairs=near, count=3, cursor=None)
        assert len(scans.filters) - before > 3  # 20, 40, 80, 160 keys... from 1958 on
