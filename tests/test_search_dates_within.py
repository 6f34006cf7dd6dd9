"""A date searched beside a status, a subject or the patient compartment, on the real FerretDB.

``ServiceRequest?status=active&authored=ge…`` reads the dates' entries kept within the status (keys.py
``SORTS_WITHIN``), so it reads the active orders of those dates and no other order. The oracle is the searches of
each clause alone (paths that read no entries within a value), intersected: FHIR's AND. The cost is the resources
the search reads.
"""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.auth.scopes import Principal, parse_scopes
from fhir_server.errors import BadRequest
from fhir_server.search.keys import INDEX_LAYOUT, LAYOUT_MARKER, WITHIN_LAYOUT
from fhir_server.service.resources import ResourceService
from fhir_server.settings import Settings
from tests.conftest import CommandCounter, fresh_store

ADMIN = Principal(subject="within-test", grants=parse_scopes("system/*.cruds"))
STATUSES = ["active", "completed", "draft", "on-hold", "revoked"]


def _authored(n: int) -> str | None:
    """30 days of March 2026 at every precision; every 23rd order has none."""
    day = 1 + n * 7 % 30
    if n % 23 == 0:
        return None
    if n % 11 == 0:
        return f"2026-03-{day:02d}"
    if n % 13 == 0:
        return "2026-03"
    return f"2026-03-{day:02d}T{8 + n % 10:02d}:{n % 60:02d}:00+08:00"


def _order(n: int) -> dict[str, Any]:
    order: dict[str, Any] = {"resourceType": "ServiceRequest", "status": STATUSES[n % 5], "intent": "order",
                             "subject": {"reference": f"Patient/p{n % 7}"}}
    if (when := _authored(n)) is not None:
        order["authoredOn"] = when
    return order


def _result(n: int) -> dict[str, Any]:
    when = f"2026-03-{1 + n * 3 % 28:02d}T09:{n % 60:02d}:00+08:00"
    return {"resourceType": "Observation", "status": "final", "code": {"text": "WBC"},
            "subject": {"reference": f"Patient/p{n % 12}"}, "effectiveDateTime": when}


async def _ids(service: ResourceService, rtype: str, pairs: list[tuple[str, str]], *, count: int = 1000,
               compartment: tuple[str, str] | None = None) -> list[str]:
    """Every match, page after page."""
    out: list[str] = []
    cursor = None
    while True:
        _, page = await service.search(principal=ADMIN, rtype=rtype, pairs=pairs, count=count, cursor=cursor,
                                       compartment=compartment)
        out += [v.rid for v in page.matches]
        if (cursor := page.next_cursor) is None:
            return out


async def _backward(service: ResourceService, rtype: str, pairs: list[tuple[str, str]], count: int) -> list[str]:
    """Every match, from the last page to the first by the ``previous`` links."""
    cursor, last = None, []
    while True:  # to the last page
        _, page = await service.search(principal=ADMIN, rtype=rtype, pairs=pairs, count=count, cursor=cursor)
        if page.next_cursor is None:
            last = [v.rid for v in page.matches]
            break
        cursor = page.next_cursor
    out, back = last, page.previous_cursor
    while back is not None:
        _, page = await service.search(principal=ADMIN, rtype=rtype, pairs=pairs, count=count, cursor=back)
        out = [v.rid for v in page.matches] + out
        back = page.previous_cursor
    return out


async def _read(service: ResourceService, finds: CommandCounter, rtype: str, pairs: list[tuple[str, str]],
                compartment: tuple[str, str] | None = None) -> tuple[set[str], int]:
    """The matches, and how many resources the search read."""
    before = len(finds.filters)
    found = await _ids(service, rtype, pairs, compartment=compartment)
    return set(found), sum(len(f.get("_id", {}).get("$in", [])) for f in finds.filters[before:])


ORDER_SEARCHES = [
    [("status", "active"), ("authored", "ge2026-03-20")],
    [("authored", "lt2026-03-08"), ("status", "completed")],
    [("status", "|draft"), ("authored", "ge2026-03-05"),
     ("authored", "lt2026-03-12")],  # a window of a week, within the draft orders
    [("status", "on-hold"), ("authored", "2026-03")],  # every value of the month, the month itself too
    [("status", "active"), ("authored", "ne2026-03-04")],
    [("status", "revoked"), ("authored", "sa2026-03-10,eb2026-03-03")],
    [("status", "active"), ("authored", "ap2026-03-15")],
    [("status", "active"), ("subject", "Patient/p3"), ("authored", "le2026-03-06")],
]
RESULT_SEARCHES = [
    [("subject", "Patient/p5"), ("date", "ge2026-03-10")],
    [("date", "ge2026-03-02"), ("date", "le2026-03-20"), ("subject", "p7")],
]


async def test_a_date_beside_a_status_or_a_subject_reads_the_entries_within_it(store_uri: str) -> None:
    finds, scans = CommandCounter("resources"), CommandCounter("search_index")
    async with fresh_store(store_uri, owner="within-test", listeners=(finds, scans)) as store:
        await store.db["jobs"].insert_one({"_id": LAYOUT_MARKER, "layout": INDEX_LAYOUT})  # as on a hub's new store
        service = ResourceService(store=store, settings=Settings())
        for n in range(400):
            await service.create(principal=ADMIN, rtype="ServiceRequest", resource=_order(n))
        for n in range(240):
            await service.create(principal=ADMIN, rtype="Observation", resource=_result(n))
        searches = [("ServiceRequest", s) for s in ORDER_SEARCHES] + [("Observation", s) for s in RESULT_SEARCHES]
        for rtype, pairs in searches:
            alone = [set(await _ids(service, rtype, [pair])) for pair in pairs]
            expected = set.intersection(*alone)
            assert expected, pairs  # (a search that matches nothing would prove little)
            scanned = len(scans.filters)
            found, read = await _read(service, finds, rtype, pairs)
            assert found == expected, pairs
            # the date's own entries are not scanned, even to probe them: its entries within the value are
            date = "authored" if rtype == "ServiceRequest" else "date"
            assert f"'{rtype}|{date}|" not in str(scans.filters[scanned:]), pairs
            assert f"'{rtype}|{date}@" in str(scans.filters[scanned:]), pairs
            # each clause alone holds from a fifth to most of its type; within the value, its matches (an order
            # of a whole month or day, or a range's edge, may be read and not match)
            assert read <= len(expected) + 3, (pairs, read, len(expected))
            paged = await _ids(service, rtype, pairs, count=4)
            assert sorted(paged) == sorted(expected) and len(paged) == len(set(paged)), pairs
            assert await _backward(service, rtype, pairs, 4) == paged, pairs
        # the Patient compartment (a patient/ token's every search): the patient's results of those dates
        pairs = [("date", "ge2026-03-15")]
        expected = set(await _ids(service, "Observation", [*pairs, ("subject", "Patient/p5")]))
        scanned = len(scans.filters)
        found, read = await _read(service, finds, "Observation", pairs, compartment=("Patient", "p5"))
        assert found == expected and read <= len(expected) + 3, (read, len(expected))
        assert "'Observation|date@Patient@" in str(scans.filters[scanned:])


async def test_a_cursor_made_before_the_store_held_the_entries_within_is_refused(store_uri: str) -> None:
    """A page read while the store was below ``WITHIN_LAYOUT`` walked the dates themselves; its cursor, taken on
    once the store holds the dates within the status, would fall outside what the search now scans: refused with
    a 400, not an empty page that looks like the end."""
    async with fresh_store(store_uri, owner="within-test") as store:
        await store.db["jobs"].insert_one({"_id": LAYOUT_MARKER, "layout": WITHIN_LAYOUT - 1})
        before = ResourceService(store=store, settings=Settings())
        for n in range(200):
            await before.create(principal=ADMIN, rtype="ServiceRequest", resource=_order(n))
        # (the last two days hold fewer orders than the drafts: the date drives, and names the cursor's key)
        pairs = [("status", "draft"), ("authored", "ge2026-03-30")]
        _, page = await before.search(principal=ADMIN, rtype="ServiceRequest", pairs=pairs, count=3, cursor=None)
        assert page.next_cursor is not None
        await store.db["jobs"].update_one({"_id": LAYOUT_MARKER}, {"$set": {"layout": INDEX_LAYOUT}})
        after = ResourceService(store=store, settings=Settings())  # (another process, or this one 5 s on)
        with pytest.raises(BadRequest):
            await after.search(principal=ADMIN, rtype="ServiceRequest", pairs=pairs, count=3,
                               cursor=page.next_cursor)
        every = await _ids(after, "ServiceRequest", pairs, count=3)  # a new first page pages on as before
        assert sorted(every) == sorted(await _ids(before, "ServiceRequest", pairs))


# chen one value; 王 and li start 王小 and lin; ma starts five longer families, more than are read within
FAMILIES = ["chen", "Chén", "CHEN", "王", "王小", "li", "lin", "zhou", "ma", "mab", "mac", "mad", "mae", "maf"]
BORN = ["1950", "1962-07", "1970", "1970-05", "1970-05-03", "1971-12-31", "1980-02-29", "1990", None]


def _person(n: int) -> dict[str, Any]:
    names = [{"family": FAMILIES[n % len(FAMILIES)], **({"given": [["an", "bo", "小东"][n % 3]]} if n % 5 else {})}]
    if n % 9 == 0:  # a second name: the person's birth date is within both families
        names.append({"family": FAMILIES[(n // 9) % len(FAMILIES)]})
    person: dict[str, Any] = {"resourceType": "Patient", "name": names}
    if (born := BORN[n % 9 if n % 4 else (n // 4) % 9]) is not None:
        person["birthDate"] = born
    return person


# (the search, whether it reads within the family's values: that one, and the few longer ones that start with it)
PERSON_SEARCHES = [
    ([("family", "chen"), ("birthdate", "1970")], True),
    ([("family", "CHÉN"), ("birthdate", "ge1970-05"), ("birthdate", "lt1980")], True),  # a window, in any case
    ([("family:exact", "Chén"), ("birthdate", "le1971")], True),  # exact: the spelling checked on each chen read
    ([("family", "王小"), ("birthdate", "ne1970")], True),
    ([("family", "王"), ("birthdate", "ge1970")], True),  # within 王 and within 王小
    ([("family", "li"), ("birthdate", "sa1962")], True),  # li and lin
    ([("family", "ma"), ("birthdate", "ge1962")], False),  # ma and five more: the dates' own entries
    ([("family", "lin"), ("birthdate", "1970,1990")], True),
    ([("family", "chen"), ("given", "小")], True),  # given names within the family, by prefix
]


async def test_a_birth_date_beside_a_family_name_reads_the_entries_within_it(store_uri: str) -> None:
    """``Patient?family=chen&birthdate=1970`` reads the birth dates kept within the family chen (case and accents
    folded; no longer family starts with chen, as one key of the store tells): the chen born in 1970, not every chen
    nor everyone born then. 王 is also the start of 王小, whose people have no birth dates within 王: that search
    reads within both. ma starts five longer families, more than are read within: it reads as before. A page after
    the first goes on as its cursor began, though a person named cheng (or the last lin) is written in between; the
    next first page sees the change."""
    finds, scans = CommandCounter("resources"), CommandCounter("search_index")
    async with fresh_store(store_uri, owner="within-test", listeners=(finds, scans)) as store:
        await store.db["jobs"].insert_one({"_id": LAYOUT_MARKER, "layout": INDEX_LAYOUT})
        service = ResourceService(store=store, settings=Settings())
        made = [(await service.create(principal=ADMIN, rtype="Patient", resource=_person(n))).version.rid
                for n in range(360)]
        for pairs, sole in PERSON_SEARCHES:
            expected = set.intersection(*[set(await _ids(service, "Patient", [pair])) for pair in pairs])
            assert expected, pairs
            scanned = len(scans.filters)
            found, read = await _read(service, finds, "Patient", pairs)
            assert found == expected, pairs
            within = str(scans.filters[scanned:])
            dated = pairs[1][0]
            assert (f"'Patient|{dated}@family@" in within) == sole, pairs
            if sole:  # the families' own entries and the dates' are not scanned, beyond the one key that tells;
                # what is read is the matches of the folded family (an exact search's other spellings are read too)
                folded = [("family", p[1]) if p[0] == "family:exact" else p for p in pairs]
                bound = len(set.intersection(*[set(await _ids(service, "Patient", [pair])) for pair in folded]))
                assert f"'Patient|{dated}|" not in within and read <= bound + 3, (pairs, read, bound)
            paged = await _ids(service, "Patient", pairs, count=4)
            assert sorted(paged) == sorted(expected) and len(paged) == len(set(paged)), pairs
            assert await _backward(service, "Patient", pairs, 4) == paged, pairs

        # sorted in index order (past 2 matches): by the date within the family (chen), by the date of every family
        # starting so (li, ma: a walk reads one value's run), and by family then date, whose walk passes the groups
        # of 王 and 王小 within them
        walking = ResourceService(store=store, settings=Settings(search_sort_in_memory=2))
        for pairs in ([("family", "chen"), ("_sort", "-birthdate")], [("family", "li"), ("_sort", "birthdate")],
                      [("family", "王"), ("birthdate", "ge1950"), ("_sort", "family,birthdate")],
                      [("family", "王"), ("birthdate", "ge1950"), ("_sort", "birthdate")],
                      [("family", "ma"), ("birthdate", "ge1962"), ("_sort", "-birthdate")]):
            expected = set.intersection(*[set(await _ids(service, "Patient", [pair])) for pair in pairs[:-1]])
            paged = await _ids(walking, "Patient", pairs, count=4)
            assert sorted(paged) == sorted(expected) and len(paged) == len(set(paged)), pairs

        for pairs, written in (([("family", "chen"), ("birthdate", "ge1950")], "cheng"),
                               ([("family", "li"), ("birthdate", "ge1950")], "lin")):
            before = set(await _ids(service, "Patient", pairs))
            _, page = await service.search(principal=ADMIN, rtype="Patient", pairs=pairs, count=4, cursor=None)
            seen = [v.rid for v in page.matches]
            # the same search over two types, counted (Practitioner has no birthdate: Patient alone is searched)
            _, many = await service.search_many(principal=ADMIN, types=["Patient", "Practitioner"],
                                                pairs=[*pairs, ("_total", "accurate")], count=4, cursor=None)
            assert many.total == len(before), written
            seen_many = [v.rid for v in many.matches]
            if written == "cheng":  # chen is no longer one value
                await service.create(principal=ADMIN, rtype="Patient",
                                     resource={"resourceType": "Patient", "name": [{"family": "cheng"}],
                                               "birthDate": "1960"})
            else:  # li becomes one value
                for n, rid in enumerate(made):
                    if "lin" in (FAMILIES[n % len(FAMILIES)], FAMILIES[(n // 9) % len(FAMILIES)] if n % 9 == 0 else ""):
                        await service.delete(principal=ADMIN, rtype="Patient", rid=rid)
            cursor = page.next_cursor
            while cursor is not None:
                _, page = await service.search(principal=ADMIN, rtype="Patient", pairs=pairs, count=4, cursor=cursor)
                seen += [v.rid for v in page.matches]
                cursor = page.next_cursor
            cursor = many.next_cursor
            while cursor is not None:
                _, many = await service.search_many(principal=ADMIN, types=["Patient", "Practitioner"],
                                                    pairs=[*pairs, ("_total", "accurate")], count=4, cursor=cursor)
                seen_many += [v.rid for v in many.matches]
                cursor = many.next_cursor
            after = set(await _ids(service, "Patient", pairs))
            assert many.total == len(before), written  # the first page's count, which its cursors keep
            for got in (seen, seen_many):
                assert len(got) == len(set(got)), written
                assert set(got) >= before & after and set(got) <= before | after, written
            assert after == set.intersection(*[set(await _ids(service, "Patient", [pair])) for pair in pairs])
