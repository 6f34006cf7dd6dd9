"""What the engine reads from the store, on the real FerretDB: the clause that drives a search, a sort's walk.

Results are checked elsewhere against a brute-force evaluator; here the point is the cost. A parameter that was
selective in recent searches is probed alone, and a wrong guess still gives the right matches.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from datetime import datetime
from typing import Any, TypeVar

import pytest

from fhir_server.auth.scopes import Principal, parse_scopes
from fhir_server.search.engine import SearchPage
from fhir_server.search.keys import INDEX_LAYOUT, LAYOUT_MARKER, string_enc
from fhir_server.service.resources import ResourceService
from fhir_server.settings import Settings
from fhir_server.storage.versions import index_key
from tests.conftest import CommandCounter, collated, fresh_store

ADMIN = Principal(subject="probe-test", grants=parse_scopes("system/*.cruds"))
T = TypeVar("T")


@pytest.fixture
async def service(store_uri: str):
    reads = CommandCounter("search_index")
    async with fresh_store(store_uri, owner="probe-test", listeners=(reads,)) as store:
        await store.db["jobs"].insert_one({"_id": LAYOUT_MARKER, "layout": INDEX_LAYOUT})  # as on a hub's new store
        yield ResourceService(store=store, settings=Settings()), reads


def _patient(n: int, family: str, birth: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": family, "given": [f"G{n}"]}], "birthDate": birth}


async def _ids(service: ResourceService, reads: CommandCounter, query: str) -> tuple[set[str], int]:
    before = reads.count
    pairs = [tuple(p.split("=", 1)) for p in query.split("&")]
    _, page = await service.search(principal=ADMIN, rtype="Patient", pairs=pairs, count=100,  # type: ignore[arg-type]
                                   cursor=None)
    return {v.rid for v in page.matches}, reads.count - before


async def test_a_parameter_selective_lately_is_probed_alone(service) -> None:
    service, reads = service
    # 40 Wangs over 20 birthdays: the name alone is unselective, a birthday holds two people (by name, not by
    # family: the birth dates within a family would drive alone, test_search_dates_within.py)
    for n in range(40):
        await service.create(principal=ADMIN, rtype="Patient", resource=_patient(n, "王", f"1980-01-{n % 20 + 1:02d}"))
    expected = {}
    for day in range(1, 21):
        expected[day], reads_first = await _ids(service, reads, f"name=王&birthdate=1980-01-{day:02d}")
        assert len(expected[day]) == 2
        if day == 1:
            # nothing known yet: both probed (the birthdate probe holds every key), in one shared command
            assert reads_first == 1 and len(reads.filters[-1]["$or"]) == 2
    # by now birthdate is known to be selective: one probe, whose keys are the candidates
    for day in range(1, 21):
        found, index_reads = await _ids(service, reads, f"birthdate=1980-01-{day:02d}&name=王")
        assert found == expected[day]
        assert index_reads == 1


async def test_a_wrong_guess_costs_a_probe_not_a_result(service) -> None:
    service, reads = service
    for n in range(12):  # twelve born the same day, four of them Lis
        await service.create(principal=ADMIN, rtype="Patient",
                             resource=_patient(n, "李" if n < 4 else f"Z{n}", "1990-05-05"))
    for n in range(10):
        await service.create(principal=ADMIN, rtype="Patient",
                             resource=_patient(100 + n, "Solo", f"1991-02-{n + 1:02d}"))
    for n in range(10):  # teaches: birthdate is selective (one key), name is not (ten)
        await _ids(service, reads, f"name=Solo&birthdate=1991-02-{n + 1:02d}")
    found, index_reads = await _ids(service, reads, "name=李&birthdate=1990-05-05")
    assert len(found) == 4
    assert index_reads == 2  # birthdate alone (9 keys: not selective this time), then name, which drives


def _regex_scans(reads: CommandCounter, since: int) -> list[dict[str, Any]]:
    """The substring-filtered scans among the search-index reads after the first ``since``."""
    def filtered(f: dict[str, Any]) -> bool:
        return "$regex" in f.get("_id", {}) or any("$regex" in b.get("_id", {}) for b in f.get("$or", []))
    return [f for f in reads.filters[since:] if filtered(f)]


async def _fifty_at_a_time(calls: list[Awaitable[T]]) -> list[T]:
    """Await the writes fifty at a time (their store commands shared), their results in order."""
    done: list[T] = []
    for start in range(0, len(calls), 50):
        done += await asyncio.gather(*calls[start:start + 50])
    return done


async def _create_all(service: ResourceService, resources: list[dict[str, Any]]) -> list[str]:
    """Create the Patients and return their ids in order."""
    return [w.version.rid for w in await _fifty_at_a_time([
        service.create(principal=ADMIN, rtype="Patient", resource=r) for r in resources])]


async def test_a_substring_scan_is_probed_only_when_no_other_clause_is_selective(service) -> None:
    """``_content`` (a scan of every ``_content`` key, filtered in the store) beside ``family``: when the family
    has few keys, the ``_content`` range is not read at all; when it has more than the largest probe (2,048), the
    substring scan is probed, and drives if it holds fewer. Either way the matches are the same."""
    service, reads = service
    wangs = []
    for n in range(2100):  # 2,100 Wangs; three of them with a note naming a rare word, 99 a common one
        resource = _patient(n, "王", "1970-01-01")
        if n % 700 == 7:
            resource["extension"] = [{"url": "http://example.cn/note", "valueString": f"罕见病例 {n}"}]
        elif n % 21 == 0:
            resource["extension"] = [{"url": "http://example.cn/note", "valueString": f"常见病例 {n}"}]
        wangs.append(resource)
    await _create_all(service, wangs)
    note = [{"url": "http://example.cn/note", "valueString": "罕见病例"}]
    await service.create(principal=ADMIN, rtype="Patient", resource={**_patient(9999, "欧阳", "1970-01-01"),
                                                                       "extension": note})
    before = len(reads.filters)
    found, _ = await _ids(service, reads, "family=欧阳&_content=罕见病例")
    assert len(found) == 1 and not _regex_scans(reads, before)  # family drives; _content is checked on the body
    before = len(reads.filters)
    found, _ = await _ids(service, reads, "family=王&_content=罕见病例")
    assert len(found) == 3 and len(_regex_scans(reads, before)) == 1  # probed once, and its keys drive
    before = len(reads.filters)
    found, _ = await _ids(service, reads, "_content=常见病例&family:contains=王")  # two substring scans alone
    assert len(found) == 99 and len(_regex_scans(reads, before)) == 2  # one probe each, at 256 keys (not 8, 64)


async def test_a_clause_found_large_lately_is_not_probed_again(service) -> None:
    """``gender=female&general-practitioner:missing=true``, as a worklist asks it again and again: both clauses
    hold thousands of Patients. The first search probes both (8, 64, 256 and 2,048 ``gender`` keys, then 256
    ``@lacks`` keys) before its page; searches within ``LARGE_FOR`` seconds read the page only. A clause that
    shrank since costs a slower walk, never a result; after ``LARGE_FOR`` the probes are read again."""
    service, reads = service
    patients = []
    for n in range(2800):  # 2,100 women, every fourth Patient with a general practitioner: 1,575 match
        resource = {**_patient(n, f"F{n}", "1970-01-01"), "gender": "female" if n % 4 else "male"}
        if n % 4 == 1:
            resource["generalPractitioner"] = [{"reference": "Practitioner/gp"}]
        patients.append(resource)
    made = list(enumerate(await _create_all(service, patients)))
    expected = {rid for n, rid in made if n % 4 in (2, 3)}
    query = "gender=female&general-practitioner:missing=true"

    async def search() -> tuple[set[str], int, int]:
        before = len(reads.filters)
        found, index_reads = await _ids(service, reads, query)
        return found, index_reads, len(_regex_scans(reads, before))

    found, probed, lacks_scans = await search()
    assert len(found) == 100 and found <= expected and lacks_scans >= 1  # a page of 100
    again, index_reads, lacks_scans = await search()
    assert again == found and index_reads == probed - 5 and lacks_scans == 0  # the page's own reads only
    # now 6 women, 4 of them without a practitioner: gender=female is small
    await _fifty_at_a_time([service.delete(principal=ADMIN, rtype="Patient", rid=rid) for _, rid in made[:-8]])
    left = {rid for n, rid in made[-8:] if n % 4 in (2, 3)}
    found, _, _ = await search()
    assert found == left and len(left) == 4
    service.engine.selectivity.LARGE_FOR = 0.0
    found, index_reads, _ = await search()
    assert found == left and index_reads == 1  # gender probed again: 6 keys, which drive (no other index read)


async def test_a_clause_of_a_few_thousand_keys_is_found_beside_larger_ones(store_uri: str) -> None:
    """``family=王&given=小东&birthdate=1960``, where every clause holds more than 256 Patients: the probes grow to
    2,048 keys, and of the clauses whose probe then read every key (given, birthdate) the smallest drives, its keys
    narrowed to the Patients the other complete probe found too. It reads 400 resources for its 100 matches: 600
    without the narrowing (everyone named 小东), ~2,400 without the fourth probe (every Wang: the first clause
    drove when no probe was complete). So while five longer families start with 王 too (王一…王五: more than are
    read within); without them, the given names and birth dates within 王 are probed (keys.py ``SORTS_WITHIN``)
    and it reads its 100 matches alone."""
    finds = CommandCounter("resources")
    async with fresh_store(store_uri, owner="probe-test", listeners=(finds,)) as store:
        await store.db["jobs"].insert_one({"_id": LAYOUT_MARKER, "layout": INDEX_LAYOUT})
        service = ResourceService(store=store, settings=Settings())
        people = []
        for n in range(2400):  # 2,400 Wangs, 300 of them 小东, 400 born in 1960: 100 Wangs named 小东 born in 1960
            person = _patient(n, "王", "1960-03-03" if n % 6 == 0 else "1971-01-01")
            person["name"][0]["given"] = ["小东" if n % 8 == 0 else f"G{n}"]
            people.append(person)
        for n in range(300):  # 300 others named 小东 born in 1960
            person = _patient(n, "李", "1960-05-05")
            person["name"][0]["given"] = ["小东"]
            people.append(person)
        people += [_patient(0, f"王{n}", "1971-01-01") for n in "一二三四五"]
        made = await _create_all(service, people)
        expected = {rid for n, rid in enumerate(made[:2400]) if n % 24 == 0}
        for within in (False, True):
            if within:
                for rid in made[-5:]:
                    await service.delete(principal=ADMIN, rtype="Patient", rid=rid)
            for query in ("family=王&given=小东&birthdate=1960", "birthdate=1960&given=小东&family=王"):
                before = len(finds.filters)
                found, _ = await _ids(service, finds, query)
                read = sum(len(f.get("_id", {}).get("$in", [])) for f in finds.filters[before:])
                assert found == expected, query
                assert read == (100 if within else 400), (query, within)
        paged: list[str] = []  # pages of 30: the first from the narrowed keys, the next ones from its cursor on
        cursor = None
        while True:
            _, page = await service.search(principal=ADMIN, rtype="Patient", count=30, cursor=cursor, pairs=[
                ("family", "王"), ("given", "小东"), ("birthdate", "1960")])
            paged += [v.rid for v in page.matches]
            if (cursor := page.next_cursor) is None:
                break
        assert sorted(paged) == sorted(expected)


async def test_a_chain_or_has_over_its_cap_is_checked_on_each_candidate(store_uri: str) -> None:
    """A chain or ``_has`` whose sub-search matches more than ``search_chain_max`` (3 here) is checked on each
    candidate (engine ``Join``) instead of being a 400. A chain alone is driven by its own entries and reads only
    the resources that name a match (their targets first); beside a selective clause, that clause drives. A
    ``_has`` reads a few of a candidate's referring resources first and more only when those all fail (here the
    match is the seventieth); a deleted target matches no longer; pages of 2 give every match once."""
    reads = CommandCounter("resources")
    async with fresh_store(store_uri, owner="cap-test", listeners=(reads,)) as store:
        await store.db["jobs"].insert_one({"_id": LAYOUT_MARKER, "layout": INDEX_LAYOUT})
        service = ResourceService(store=store, settings=Settings(search_chain_max=3))
        xiahou: list[str] = []
        others: list[str] = []
        psa: list[tuple[str, str]] = []  # (Patient, its PSA Observation)

        def observation(subject: str, code: str, status: str = "final") -> dict[str, Any]:
            return {"resourceType": "Observation", "status": status, "code": {"text": code},
                    "subject": {"reference": subject}}

        for n in range(10):  # five 夏侯, five 欧阳; a PSA for each odd one, CEA for the others
            family = "夏侯" if n < 5 else "欧阳"
            made = await service.create(principal=ADMIN, rtype="Patient", resource=_patient(n, family, "1970-01-01"))
            (xiahou if n < 5 else others).append(made.version.rid)
            for _ in range(70 if n == 0 else 1):
                code = "PSA" if n % 2 else "CEA"
                obs = await service.create(principal=ADMIN, rtype="Observation", resource=observation(
                    made.version.key, code, "amended" if n == 3 else "final"))
                if code == "PSA":
                    psa.append((made.version.rid, obs.version.rid))
        # the first Patient has seventy Observations (more than a chunk's range asks for, 64): the last in the
        # index's order (by id) becomes a PSA
        first = f"Patient/{xiahou[0]}"
        _, page = await service.search(principal=ADMIN, rtype="Observation", pairs=[("subject", first)], count=100,
                                       cursor=None)
        last = max(v.rid for v in page.matches)
        await service.update(principal=ADMIN, rtype="Observation", rid=last, resource={
            **observation(first, "PSA"), "id": last})
        psa.append((xiahou[0], last))

        async def every(rtype: str, pairs: list[tuple[str, str]]) -> list[str]:
            found, cursor = [], None
            while True:
                _, page = await service.search(principal=ADMIN, rtype=rtype, pairs=pairs, count=2, cursor=cursor)
                found += [v.rid for v in page.matches]
                if (cursor := page.next_cursor) is None:
                    return found

        def observations_read() -> int:
            return sum(str(f).count("'Observation/") for f in reads.filters)

        # an orphan entry (as a crash leaves) says that an 欧阳 is a 夏侯: the sub-search's keys name six Patients,
        # the join reads its candidates' targets and finds five
        index = store.db["search_index"]
        key = (await index.find_one({"_id": {"$gte": "Patient|family|", "$lt": "Patient|family|~",
                                             "$regex": re.escape(f"|{xiahou[0]}|")}}))["_id"]
        await index.insert_one({"_id": key.replace(f"|{xiahou[0]}|", f"|{others[0]}|")})
        on_xiahou = await every("Observation", [("subject:Patient.family", "夏侯")])
        assert len(on_xiahou) == 74 and len(set(on_xiahou)) == 74  # 70 + 4, in pages of 2
        _, page = await service.search(principal=ADMIN, rtype="Observation", count=100, cursor=None,
                                       pairs=[("subject:Patient.family", "夏侯")])
        assert [v.rid for v in page.matches] == on_xiahou  # in one page: the first's 70 keys read past 64
        reads.filters.clear()
        on_xiahou_psa = await every("Observation", [("subject:Patient.family", "夏侯"), ("code:text", "PSA")])
        assert sorted(on_xiahou_psa) == sorted(o for p, o in psa if p in xiahou)
        reads.filters.clear()
        _, page = await service.search(principal=ADMIN, rtype="Observation", pairs=[
            ("subject:Patient.family", "欧阳")], count=10, cursor=None)
        assert len(page.matches) == 5 and observations_read() == 5  # not the other 16: their targets fail
        psa_patients = sorted({p for p, _ in psa})
        assert sorted(await every("Patient", [("_has:Observation:subject:code:text", "PSA")])) == psa_patients
        assert sorted(await every("Patient", [("_has:Observation:subject:code:text", "PSA"), ("family", "夏侯")])) \
            == sorted(p for p in psa_patients if p in xiahou)
        assert await every("Patient", [("_has:Observation:subject:status", "final"), ("family", "欧阳"),
                                       ("_has:Observation:subject:code:text", "PSA")]) == sorted(
            p for p in psa_patients if p in others)
        await service.delete(principal=ADMIN, rtype="Patient", rid=xiahou[1])
        assert sorted(await every("Observation", [("subject:Patient.family", "夏侯"), ("code:text", "PSA")])) == \
            sorted(o for p, o in psa if p in xiahou and p != xiahou[1])


async def test_a_counted_search_over_several_types_resolves_its_chain_once_per_type(service) -> None:
    """``_type=Observation,DiagnosticReport`` with a chain and ``_total=accurate``: each type's chain is resolved
    (a scan of the Patients' family keys) once, for the page and the count alike (it was twice)."""
    service, reads = service
    made = await service.create(principal=ADMIN, rtype="Patient", resource=_patient(1, "司马", "1960-06-06"))
    subject = {"reference": f"Patient/{made.version.rid}"}
    for rtype in ("Observation", "DiagnosticReport"):
        for _ in range(2):
            await service.create(principal=ADMIN, rtype=rtype, resource={
                "resourceType": rtype, "status": "final", "code": {"text": "x"}, "subject": subject})
    before = len(reads.filters)
    resolved: list[str] = []  # the chains' sub-searches the engine resolved (its own method, called through)
    engine = service.engine
    sub_matches = engine._sub_matches

    async def counted(query: Any, clauses: Any) -> Any:
        resolved.append(query.rtype)
        return await sub_matches(query, clauses)

    engine._sub_matches = counted  # type: ignore[method-assign]
    _, page = await service.search_many(principal=ADMIN, types=["Observation", "DiagnosticReport"],
                                        pairs=[("subject:Patient.family", "司马"), ("_total", "accurate")],
                                        count=3, cursor=None)
    assert page.total == 4 and len(page.matches) == 3
    assert resolved == ["Patient", "Patient"], resolved  # once per type, for its page and its count
    # the store read the family's keys for them: the two types' scans may share one command, and the store's
    # batcher sends two scans of the same range as one (so a count of ranges is 1 or 2, each a low and high bound)
    family = "Patient|family|" + string_enc("司马")[:-1]
    assert sum(str(f).count(f"'{family}") for f in reads.filters[before:]) in (2, 4)


async def _everything_pages(service: ResourceService, pid: str, count: int) -> tuple[list[list[str]], SearchPage]:
    """The keys of every page of the patient's ``$everything`` of ``count`` a page, by the next links; the last page."""
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = await service.everything(principal=ADMIN, pid=pid, since=None, types=None, count=count, cursor=cursor)
        pages.append([v.key for v in page.matches])
        if page.next_cursor is None:
            return pages, page
        cursor = page.next_cursor
        assert len(pages) < 100


async def test_everything_asks_the_compartment_types_whether_they_have_a_match_together(service) -> None:
    """``$everything`` searches each of the ~65 types of the Patient compartment; most have no match. Their
    first scans go out together, a window of types at a time, sharing commands: a handful of index reads for
    the whole compartment (it was a round trip per type, ~100), and paging two at a time still gives every
    resource once, the practitioner an Observation names as an include. So do a sort and a count over the
    compartment."""
    service, reads = service
    patient = await service.create(principal=ADMIN, rtype="Patient", resource=_patient(1, "欧阳", "1970-03-03"))
    doctor = await service.create(principal=ADMIN, rtype="Practitioner", resource={"resourceType": "Practitioner"})
    pid = patient.version.rid
    subject = {"reference": f"Patient/{pid}"}
    made = [f"Patient/{pid}"]
    for rtype, extra in (("Observation", {"status": "final", "code": {"text": "Hb"}}),
                         ("Observation", {"status": "final", "code": {"text": "WBC"},
                                          "performer": [{"reference": f"Practitioner/{doctor.version.rid}"}]}),
                         ("Condition", {"code": {"text": "lung cancer"}}),
                         ("Encounter", {"status": "finished", "class": {"code": "AMB"}})):
        written = await service.create(principal=ADMIN, rtype=rtype, resource={
            "resourceType": rtype, "subject": subject, **extra})
        made.append(written.version.key)
    before = reads.count
    page = await service.everything(principal=ADMIN, pid=pid, since=None, types=None, count=50, cursor=None)
    assert sorted(v.key for v in page.matches) == sorted(made) and page.next_cursor is None
    assert [v.key for v in page.included] == [doctor.version.key]
    assert reads.count - before <= 16, reads.count - before  # 12 here; 96 one type after the other
    pages, page = await _everything_pages(service, pid, 2)
    assert sorted(k for keys in pages for k in keys) == sorted(made)
    # and back by the previous links, over the empty types between them just as cheaply
    before, back = reads.count, []
    while page.previous_cursor is not None:
        page = await service.everything(principal=ADMIN, pid=pid, since=None, types=None, count=2,
                                        cursor=page.previous_cursor)
        back.insert(0, [v.key for v in page.matches])
    assert back == pages[:-1]
    assert reads.count - before <= 16, reads.count - before
    # a patient's timeline over every type, and the count of its compartment, ask the types together too
    before = reads.count
    _, timeline = await service.search_many(principal=ADMIN, types=None, pairs=[("_sort", "-_lastUpdated")],
                                            count=10, cursor=None, compartment=("Patient", pid))
    assert [v.key for v in timeline.matches] == made[::-1]  # written one after the other
    _, counted = await service.search_many(principal=ADMIN, types=None, pairs=[("_summary", "count")],
                                           count=10, cursor=None, compartment=("Patient", pid))
    assert counted.total == len(made)
    assert reads.count - before <= 32, reads.count - before


async def test_everything_reads_each_resource_of_the_compartment_once(store_uri: str) -> None:
    """The probes that ask the compartment's types whether they have a match read each such type's first keys
    and their resources; the page takes those matches rather than scanning and reading them again (it did: 20
    store commands for a patient with five resources, then 12; 8 since the probes of a window are read
    together). Paged one match at a time, a type whose probe read
    more than the page wants continues from the cursor after the last it gave; the page of the last match has no
    next link when the types after it were probed without a match (it led to an empty page)."""
    finds, scans = CommandCounter("resources"), CommandCounter("search_index")
    async with fresh_store(store_uri, owner="everything-test", listeners=(finds, scans)) as store:
        await store.db["jobs"].insert_one({"_id": LAYOUT_MARKER, "layout": INDEX_LAYOUT})
        service = ResourceService(store=store, settings=Settings())
        patient = await service.create(principal=ADMIN, rtype="Patient", resource=_patient(1, "诸葛", "1966-06-06"))
        pid = patient.version.rid
        subject = {"reference": f"Patient/{pid}"}
        made = []
        for rtype, extra in [("Observation", {"status": "final", "code": {"text": f"CEA {n}"}}) for n in range(3)] + [
                ("Condition", {"code": {"text": "gastric cancer"}}),
                ("ServiceRequest", {"status": "active", "intent": "order", "code": {"text": "CT"}})]:
            written = await service.create(principal=ADMIN, rtype=rtype, resource={
                "resourceType": rtype, "subject": subject, **extra})
            made.append(written.version.key)
        before_finds, before_scans = len(finds.filters), len(scans.filters)
        page = await service.everything(principal=ADMIN, pid=pid, since=None, types=None, count=50, cursor=None)
        assert sorted(v.key for v in page.matches) == sorted([f"Patient/{pid}", *made])
        read = [i for f in finds.filters[before_finds:] for i in f["_id"]["$in"]]
        assert sorted(k for k in read if k in made) == sorted(made)  # each one once (the Patient: read, then found)
        scanned = [str(f) for f in scans.filters[before_scans:]]
        for rtype in ("Observation", "Condition", "ServiceRequest"):  # each type's subject keys scanned once
            assert sum(f"'{rtype}|subject|" in f for f in scanned) == 1, (rtype, scanned)
        pages, _ = await _everything_pages(service, pid, 1)
        assert sorted(k for keys in pages for k in keys) == sorted([f"Patient/{pid}", *made])
        # the last page is the last match's: the types after it were probed without a match, so no next link
        assert all(len(keys) == 1 for keys in pages), pages


async def test_a_page_ending_a_type_links_on_only_to_a_later_type_with_a_match(service) -> None:
    """A page over several types that fills with the last match of a type, in a request that had not asked the
    later types yet whether they have a match: ``$everything?_count=1`` of a patient with nothing else (the
    Patient fills the first page), and a page from a cursor inside ``_type=Observation,Condition`` that ends with
    the last Observation. Both linked to a next page that came back empty; the later types are asked then, and
    the next link, when there is one, leads to the type that has a match."""
    service, _ = service
    lone = await service.create(principal=ADMIN, rtype="Patient", resource=_patient(1, "独孤", "1949-10-01"))
    pages, last = await _everything_pages(service, lone.version.rid, 1)
    assert pages == [[lone.version.key]] and last.total == 1
    patient = await service.create(principal=ADMIN, rtype="Patient", resource=_patient(2, "独孤", "1950-01-01"))
    subject = {"reference": patient.version.key}
    made = []
    for n in range(4):
        written = await service.create(principal=ADMIN, rtype="Observation", resource={
            "resourceType": "Observation", "status": "final", "code": {"text": f"AFP {n}"}, "subject": subject})
        made.append(written.version.key)

    async def pages_of(count: int) -> list[list[str]]:
        found: list[list[str]] = []
        cursor = None
        while len(found) < 10:
            _, page = await service.search_many(principal=ADMIN, types=["Observation", "Condition"],
                                                pairs=[("subject", patient.version.key)], count=count, cursor=cursor)
            found.append([v.key for v in page.matches])
            if (cursor := page.next_cursor) is None:
                return found
        raise AssertionError(found)

    assert [len(p) for p in await pages_of(2)] == [2, 2]  # the second page's last is the last Observation
    condition = await service.create(principal=ADMIN, rtype="Condition", resource={
        "resourceType": "Condition", "subject": subject, "code": {"text": "hepatocellular carcinoma"}})
    pages = await pages_of(2)
    assert pages[-1] == [condition.version.key] and [len(p) for p in pages] == [2, 2, 1]
    assert sorted(k for p in pages[:2] for k in p) == sorted(made)


async def test_everything_probes_read_together_agree_with_a_walk_of_each_type(service) -> None:
    """The probes of a window of types are scanned and read together (``_heads``); a type whose range fills its
    probe (25 Observations), a resource that is in the compartment by two parameters (an Observation whose
    subject and performer are the patient; an AllergyIntolerance that is the patient's and recorded by the
    patient), another patient's resources and entries a crashed writer left must come out as walking each type
    does: each match once, at any page size."""
    service, _ = service
    patient = await service.create(principal=ADMIN, rtype="Patient", resource=_patient(1, "上官", "1958-08-08"))
    other = await service.create(principal=ADMIN, rtype="Patient", resource=_patient(2, "上官", "1959-09-09"))
    pid = patient.version.rid
    me, them = {"reference": f"Patient/{pid}"}, {"reference": f"Patient/{other.version.rid}"}
    made = [f"Patient/{pid}"]
    for n in range(25):
        extra = {"performer": [me]} if n == 22 else {}
        written = await service.create(principal=ADMIN, rtype="Observation", resource={
            "resourceType": "Observation", "status": "final", "code": {"text": f"CA19-9 {n}"}, "subject": me,
            **extra})
        made.append(written.version.key)
    for rtype, resource in (("AllergyIntolerance", {"patient": me, "recorder": me}),
                            ("Condition", {"subject": me, "code": {"text": "pancreatic cancer"}})):
        written = await service.create(principal=ADMIN, rtype=rtype, resource={"resourceType": rtype, **resource})
        made.append(written.version.key)
    for rtype, resource in (("Observation", {"status": "final", "code": {"text": "x"}, "subject": them}),
                            ("Condition", {"subject": them, "code": {"text": "y"}})):
        await service.create(principal=ADMIN, rtype=rtype, resource={"resourceType": rtype, **resource})
    for count in (50, 7, 1):
        pages, _ = await _everything_pages(service, pid, count)
        found = [k for keys in pages for k in keys]
        assert sorted(found) == sorted(made) and len(found) == len(set(found)), count
        assert all(len(keys) == count for keys in pages[:-1]), (count, [len(k) for k in pages])
    # what crashed writers left: 20 entries of resources that never became visible, before the real ones' keys:
    # Condition's one range, and Observation's first (performer: the Observation whose performer is the patient
    # comes after them; its subject range after that has 25). A probe's range filled with them and fewer
    # matches is walked on its own further, and a later range's matches do not stand in for the rest of it
    for rtype, key, param in (("Condition", made[-1], "subject|"), ("Observation", made[23], "performer|")):
        version = await service.store.current(rtype, key.split("/")[1], with_index=True)
        assert version is not None
        item = next(i for i in version.index if i.startswith(param))
        await service.store.search_index.insert_many([{"_id": index_key(rtype, f"00orphan{n:02d}", item)}
                                                      for n in range(20)])
    for count in (50, 7, 1):
        pages, _ = await _everything_pages(service, pid, count)
        found = [k for keys in pages for k in keys]
        assert sorted(found) == sorted(made) and len(found) == len(set(found)), count
        assert all(len(keys) == count for keys in pages[:-1]), (count, [len(k) for k in pages])


async def _sorted_pages(service: ResourceService, finds: CommandCounter, scans: CommandCounter, sort: str,
                        count: int) -> tuple[list[list[str]], list[int], list[list[dict[str, Any]]]]:
    """The ids of every page of ``Patient?_sort=<sort>``, the Patients read from ``resources`` for each (``finds``
    counts them), and the filters of its scans of ``search_index`` (``scans``)."""
    pages, reads, filters, cursor = [], [], [], None
    while True:
        before, scanned = len(finds.filters), len(scans.filters)
        _, page = await service.search(principal=ADMIN, rtype="Patient", pairs=[("_sort", sort)], count=count,
                                       cursor=cursor)
        pages.append([v.rid for v in page.matches])
        reads.append(sum(len(f["_id"]["$in"]) if "$in" in f.get("_id", {}) else 1 for f in finds.filters[before:]))
        filters.append(scans.filters[scanned:])
        if page.next_cursor is None:
            return pages, reads, filters
        cursor = page.next_cursor
        assert len(pages) < 100


async def test_a_sort_passes_over_the_other_names_of_a_patient_unread(store_uri: str) -> None:
    """Patients named in pinyin and in characters: ``_sort=family`` emits each at its pinyin name ascending and at
    its Chinese name descending, and passes over the other name by its key's mark (index_order.order_marks)
    without reading the Patient: the last pages read their own Patients, not every Patient a second time, and
    once a batch of keys is mostly marked, the walk asks the store to leave the marked keys out. The marks
    follow updates that change which name comes first, or leave one name."""
    finds, scans = CommandCounter("resources"), CommandCounter("search_index")
    async with fresh_store(store_uri, owner="marks-test", listeners=(finds, scans)) as store:
        await store.db["jobs"].insert_one({"_id": LAYOUT_MARKER, "layout": INDEX_LAYOUT})  # as on a hub's new store
        service = ResourceService(store=store, settings=Settings(search_sort_in_memory=2))
        names: dict[str, list[str]] = {}
        for n in range(100):
            family = [f"li{n:02d}", f"李{n:02d}"]
            made = await service.create(principal=ADMIN, rtype="Patient", resource={
                "resourceType": "Patient", "name": [{"family": f} for f in family]})
            names[made.version.rid] = family

        async def check() -> None:
            for sort, pick, reverse in (("family", min, False), ("-family", max, True)):
                pages, reads, filters = await _sorted_pages(service, finds, scans, sort, 10)
                expected = sorted(names, key=lambda rid: pick(map(collated, names[rid])), reverse=reverse)
                assert [rid for page in pages for rid in page] == expected, sort
                # a page reads the Patients of the walk's first 20 keys it does not pass over (more than its 11)
                assert max(reads) <= 20, (sort, reads)
                left_out = [[f["_id"]["$not"]["$regex"] for f in scans if "$not" in f.get("_id", {})]
                            for scans in filters]
                assert left_out[0] == [] and left_out[-1], (sort, left_out)  # the first page: no marked keys
                assert {m for scans in left_out for m in scans} == {r"\^d" if reverse else r"\^a"}

        await check()
        rids = sorted(names)
        # the Chinese name comes first ascending now (李 li before 张 zhang), and its mark changes from ^a to ^d; the
        # other keeps one name
        for rid in rids[:10]:
            n = names[rid][1][1:]
            names[rid] = [f"李{n}", f"张{n}"]
            await service.update(principal=ADMIN, rtype="Patient", rid=rid, resource={
                "resourceType": "Patient", "id": rid, "name": [{"family": f} for f in names[rid]]})
        for rid in rids[10:15]:
            names[rid] = names[rid][:1]
            await service.update(principal=ADMIN, rtype="Patient", rid=rid, resource={
                "resourceType": "Patient", "id": rid, "name": [{"family": names[rid][0]}]})
        await check()


async def test_a_run_of_one_given_name_is_read_as_the_walk_meets_it(store_uri: str) -> None:
    """``_sort=gender,given`` over 280 men (a group taken by its second key, its members learnt from ``gender``):
    the 100 with given name 安 (an; one run, ids of one length) are read as the walk of ``given`` meets them, so
    the first page scans the first of the run's keys, not all of them; descending (``-gender,-given``), the 150 慈s
    (ci) come down in falling id order while ties go by rising id, so that run is walked up instead, also a batch
    at a time, and the walk goes on down below it. The 30 博s (bo) have ids of which some are prefixes of others
    ("z1", "z10"): ties come as the keys hold them ("z10" before "z1"), and every page is in the evaluator's order
    both ways (pinyin: 安 博 慈; by code point 博 comes first). By family (all are zhao), the
    pages walk the given names within zhao (keys.py ``SORTS_WITHIN``): the first page reads neither the family's
    280 entries nor the given names outside it, only its first keys within it (up: as many as the page's; down:
    慈's first, then walked up), and the order is the same. Every page inside a run starts past its cursor's
    match there (``IndexOrder.past``): the pages deep in a run read a few keys of it, as the first does; and so
    does each previous page, back from the last (walking down; ascending given names)."""
    scans = CommandCounter("search_index")
    async with fresh_store(store_uri, owner="runs-test", listeners=(scans,)) as store:
        await store.db["jobs"].insert_one({"_id": LAYOUT_MARKER, "layout": INDEX_LAYOUT})
        # each page takes the group by its second key (none kept: ``search_sort_keep`` 0)
        service = ResourceService(store=store, settings=Settings(search_sort_in_memory=2, search_sort_keep=0))
        given: dict[str, str] = {}
        for name, many in (("安", 100), ("慈", 150)):
            for _ in range(many):
                made = await service.create(principal=ADMIN, rtype="Patient", resource={
                    "resourceType": "Patient", "gender": "male", "name": [{"family": "zhao", "given": [name]}]})
                given[made.version.rid] = name
        for n in range(1, 31):
            await service.update(principal=ADMIN, rtype="Patient", rid=f"z{n}", resource={
                "resourceType": "Patient", "id": f"z{n}", "gender": "male",
                "name": [{"family": "zhao", "given": ["博"]}]})
            given[f"z{n}"] = "博"
        for first in ("gender", "family"):
            for sort, descending in ((f"{first},given", False), (f"-{first},-given", True)):
                expected = sorted(sorted(given, key=lambda rid: f"Patient/{rid}|"),
                                  key=lambda rid: collated(given[rid]), reverse=descending)
                pages, cursor, each = [], None, []  # each page's scans
                while True:
                    before = len(scans.filters)
                    _, page = await service.search(principal=ADMIN, rtype="Patient",
                                                   pairs=[("_sort", sort)], count=7, cursor=cursor)
                    each.append([str(f) for f in scans.filters[before:]])
                    pages.append([v.rid for v in page.matches])
                    if page.next_cursor is None:
                        break
                    cursor = page.next_cursor
                assert [rid for page in pages for rid in page] == expected, sort
                first_scans = each[0]
                plain = sum("Patient|given|" in f for f in first_scans)
                if first == "gender":
                    # up: 20 keys, the page's; down: 20 keys of 慈 (the run goes on), then 20 of it walked up
                    assert plain <= (2 if descending else 1), (sort, first_scans)
                else:
                    family = sum("Patient|family|" in f for f in first_scans)
                    within = sum("Patient|given@family@" in f for f in first_scans)
                    # the first key and where the group ends; the page's keys within it as above
                    assert plain == 0 and family <= 2 and 1 <= within <= (2 if descending else 1), (sort, first_scans)
                # a page inside a run starts past its cursor's match there: deep pages read as few keys as the first
                walked = f"Patient|given{'@family@' * (first == 'family')}"
                deepest = max(sum(walked in f for f in filters) for filters in each)
                # (down, a page that ends one run and enters the next walks each up: 4)
                assert deepest <= (4 if descending else 2), (sort, [sum(walked in f for f in filters)
                                                                    for filters in each])
                back, cursor, each = [], page.previous_cursor, []  # and back from the last page to the first
                while cursor is not None:
                    before = len(scans.filters)
                    _, page = await service.search(principal=ADMIN, rtype="Patient", pairs=[("_sort", sort)],
                                                   count=7, cursor=cursor)
                    each.append([str(f) for f in scans.filters[before:]])
                    back.insert(0, [v.rid for v in page.matches])
                    cursor = page.previous_cursor
                assert back == pages[:-1], sort
                if not descending:  # a run walked down past the cursor's match is in the order the page wants
                    deepest = max(sum(walked in f for f in filters) for filters in each)
                    assert deepest <= 2, (sort, [sum(walked in f for f in filters) for filters in each])


async def test_the_short_runs_of_a_worklists_second_key_are_read_together(store_uri: str) -> None:
    """``ServiceRequest?status=active&_sort=priority,-authored``, the 120 active routine orders a group taken by its
    second key (each order its own ``authored`` moment: runs of one): the walk of the dates within the status reads the
    members of every run that begins and ends in one chunk of it in one store call, not one call a run (a page of
    10 was 14 to 18 reads), no more than the page may still take; at a group's end, only those without a date. The
    pages, both ways, are in the order of the sort (by hand)."""
    finds = CommandCounter("resources")
    async with fresh_store(store_uri, owner="runs-test", listeners=(finds,)) as store:
        await store.db["jobs"].insert_one({"_id": LAYOUT_MARKER, "layout": INDEX_LAYOUT})
        service = ResourceService(store=store, settings=Settings(search_sort_in_memory=2, search_sort_keep=0))
        bodies = [{"resourceType": "ServiceRequest", "status": "active" if n % 3 else "completed", "intent": "order",
                   "priority": "routine" if n % 2 else "urgent", "subject": {"reference": "Patient/p1"},
                   "authoredOn": f"2026-04-{1 + n % 28:02d}T{8 + n % 9:02d}:{n % 60:02d}:{n % 7:02d}+08:00"}
                  for n in range(360)]
        bodies += [{"resourceType": "ServiceRequest", "status": "active", "intent": "order",  # last in their group
                    "priority": "routine" if n % 2 else "urgent", "subject": {"reference": "Patient/p1"}}
                   for n in range(6)]
        made = await _fifty_at_a_time([service.create(principal=ADMIN, rtype="ServiceRequest", resource=dict(b))
                                       for b in bodies])
        active = {w.version.rid: b for w, b in zip(made, bodies, strict=True) if b["status"] == "active"}

        def placed(rid: str) -> tuple[str, int, float, str]:
            body = active[rid]
            if "authoredOn" not in body:
                return body["priority"], 1, 0.0, f"ServiceRequest/{rid}|"
            return body["priority"], 0, -datetime.fromisoformat(body["authoredOn"]).timestamp(), ""

        expected = sorted(active, key=placed)
        dated = [b["authoredOn"] for b in active.values() if "authoredOn" in b]
        assert len(set(dated)) == len(dated)  # runs of one
        pages, cursor, reads, read = [], None, [], []
        pairs = [("status", "active"), ("_sort", "priority,-authored")]
        while True:
            before = len(finds.filters)
            _, page = await service.search(principal=ADMIN, rtype="ServiceRequest", pairs=pairs, count=10,
                                           cursor=cursor)
            reads.append(len(finds.filters) - before)
            read.append(sum(len(f.get("_id", {}).get("$in", [])) for f in finds.filters[before:]))
            pages.append([v.rid for v in page.matches])
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert [rid for page in pages for rid in page] == expected
        # a page inside a group: two or three reads (a run a read: 14 to 18); one that ends a group reads the group's
        # members without a date and finds where the next begins, as before
        assert sorted(reads)[len(reads) // 2] <= 3 and sum(r <= 3 for r in reads) >= len(reads) - 4, reads
        # and the orders read ahead are about those the page may still take: an in-group page reads 21 to 27
        # orders for its 10 (28 to 35 when every run in a chunk was read ahead); the last page, which ends the
        # urgent group, reads the members without a date that the tail's entries name (3), not every member (186)
        assert max(n for n, r in zip(read, reads, strict=True) if r <= 3) <= 28 and read[-1] <= 25, read
        back, cursor = [], page.previous_cursor
        while cursor is not None:
            _, page = await service.search(principal=ADMIN, rtype="ServiceRequest", pairs=pairs, count=10,
                                           cursor=cursor)
            back.insert(0, [v.rid for v in page.matches])
            cursor = page.previous_cursor
        assert back == pages[:-1]


async def test_a_counted_search_counts_on_its_first_page_and_its_cursors_keep_the_count(store_uri: str) -> None:
    """``_total=accurate`` counts every match (here by reading each) on the first page; the next and previous links
    keep that count, so the pages after it read a page's worth, not every match again (they did: a 20,000-match
    worklist cost ~850 ms a page). The total is the first page's: an order written since is on a later page but not
    in its total, as a paged result gives one. At type level, and over several types."""
    finds = CommandCounter("resources")
    async with fresh_store(store_uri, owner="count-test", listeners=(finds,)) as store:
        await store.db["jobs"].insert_one({"_id": LAYOUT_MARKER, "layout": INDEX_LAYOUT})
        service = ResourceService(store=store, settings=Settings())
        await _fifty_at_a_time([service.create(principal=ADMIN, rtype="ServiceRequest", resource={
            "resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "subject": {"reference": f"Patient/p{n}"}}) for n in range(120)])
        pairs = [("status", "active"), ("_total", "accurate")]

        async def read(page_of: Any, cursor: str | None) -> tuple[SearchPage, int]:
            before = len(finds.filters)
            page = await page_of(cursor)
            return page, sum(len(f.get("_id", {}).get("$in", [])) for f in finds.filters[before:])

        async def typed(cursor: str | None) -> SearchPage:
            return (await service.search(principal=ADMIN, rtype="ServiceRequest", pairs=pairs, count=10,
                                         cursor=cursor))[1]

        async def several(cursor: str | None) -> SearchPage:
            return (await service.search_many(principal=ADMIN, types=["ServiceRequest", "Observation"], pairs=pairs,
                                              count=10, cursor=cursor))[1]

        stored = 120
        for page_of in (typed, several):
            first, cost = await read(page_of, None)
            assert first.total == stored and cost >= stored, cost
            await service.create(principal=ADMIN, rtype="ServiceRequest", resource={
                "resourceType": "ServiceRequest", "status": "active", "intent": "order",
                "subject": {"reference": "Patient/late"}})
            second, cost = await read(page_of, first.next_cursor)
            assert second.total == stored and len(second.matches) == 10 and cost <= 30, cost
            back, _ = await read(page_of, second.previous_cursor)
            assert back.total == stored and [v.rid for v in back.matches] == [v.rid for v in first.matches]
            seen, cursor = [v.rid for v in first.matches + second.matches], second.next_cursor
            while cursor is not None:
                page, _ = await read(page_of, cursor)
                assert page.total == stored
                seen += [v.rid for v in page.matches]
                cursor = page.next_cursor
            stored += 1
            assert len(seen) == len(set(seen)) >= stored - 1
            fresh, _ = await read(page_of, None)  # a new first page counts again
            assert fresh.total == stored
