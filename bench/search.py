"""Search at scale: a generated union data set (default 100,000 Patients, each with a ServiceRequest, two
Observations and a DiagnosticReport: 500,000 resources) loaded by transaction Bundles of 100 entries from 4
clients, then each search from 16 clients, with p50/p95/p99 and requests/s. Next to each, the store's own
time for the equivalent indexed query (the same ``search_index`` range scan and ``_id`` lookups through
PyMongo, without HTTP, parsing, re-checks or JSON), measured in the same run.

    .venv/bin/python -m bench.search --patients 100000 --seconds 10 [--store-dir /tmp/search-store]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import time
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from pymongo import AsyncMongoClient

from bench.harness import Result, drive, drive_urls, hub_rss, machine_line, running_hub
from bench.synthetic import SR_CODES, mrn_system, organizations, patient_group, patient_id, transaction
from fhir_server.model.types import SUPPORTED_TYPES
from fhir_server.search.collation import sound
from fhir_server.search.compartment import patient_compartment_params
from fhir_server.search.entries import date_range, normalize_string
from fhir_server.search.keys import hexs, sortable_int, string_enc, token_enc, within_code, within_value
from fhir_server.search.query import MICROS_PER_DAY
from fhir_server.search.registry import indexed_as
from fhir_server.settings import Settings
from fhir_server.storage import ResourceStore
from fhir_server.storage.versions import split_index_key

Op = Callable[[random.Random], Awaitable[bool]]
Url = Callable[[random.Random], str]


async def load(http: aiohttp.ClientSession, base: str, patients: int, clients: int) -> float:
    """Load the data set by transactions of 100 entries (20 patient groups); returns resources/s."""
    groups_per_bundle = 20
    bundles = iter(range(0, patients, groups_per_bundle))
    loaded = 0

    async def worker() -> None:
        nonlocal loaded
        for start in bundles:
            resources = [r for i in range(start, min(start + groups_per_bundle, patients)) for r in patient_group(i)]
            async with http.post(base, json=transaction(resources)) as answer:
                body = await answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"load failed: {answer.status} {body[:300]!r}")
            loaded += len(resources)

    async with http.post(base, json=transaction(organizations())) as answer:
        await answer.read()
    started = time.perf_counter()
    last = started
    task = asyncio.gather(*(worker() for _ in range(clients)))
    while not task.done():
        await asyncio.sleep(1)
        if time.perf_counter() - last > 30:
            last = time.perf_counter()
            print(f"    loaded {loaded:,} resources, {loaded / (last - started):,.0f}/s", flush=True)
    await task
    return loaded / (time.perf_counter() - started)


def warm(folder: Path) -> None:
    """Read the store's SQLite files once: cold pages are disk reads, and the first rows would measure the
    disk (p95 in seconds after a reboot), not the search."""
    for file in sorted(folder.rglob("*.sqlite*")):
        with open(file, "rb") as f:
            while f.read(1 << 24):
                pass


def birth(i: int) -> tuple[str, str]:
    patient = patient_group(i, observations=0)[0]
    return patient["name"][0]["family"], patient["birthDate"]


async def main(patients: int, seconds: float, clients: int, store_dir: Path | None, wrk: bool,
               only: str | None = None) -> None:
    marker = store_dir / f"loaded-{patients}" if store_dir else None
    async with running_hub(data_dir=store_dir) as hub:
        print(f"{machine_line()}; {patients:,} patients ({patients * 5:,} resources), {clients} clients, "
              f"{seconds:.0f} s per row")
        connector = aiohttp.TCPConnector(limit=clients * 2)
        async with aiohttp.ClientSession(headers=hub.headers, connector=connector) as http:
            if marker is not None and marker.exists():
                print("data set already loaded in --store-dir; reading its files once into the page cache", flush=True)
                await asyncio.to_thread(warm, store_dir / "store")
            else:
                rate = await load(http, hub.base, patients, 4)
                print(f"transaction ingest (100-entry Bundles, 4 clients): {rate:,.0f} resources/s", flush=True)
                if marker is not None:
                    marker.write_text("loaded\n")
            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(hub.store_uri)
            store = ResourceStore(client["medunion"])
            zone = Settings().zone

            async def raw(rtype: str, low: str, high: str, limit: int = 51,
                          containing: tuple[str, ...] = (), backward: bool = False) -> list[Any]:
                keys = await store.scan_index(rtype, low, high, after=None, limit=limit, containing=containing,
                                              backward=backward)
                rids = sorted({split_index_key(k)[1] for k in keys})
                return list((await store.current_many(rtype, rids)).values())

            def exact(param: str, enc: str) -> tuple[str, str]:
                return f"{param}|{enc}|", f"{param}|{enc}|~"

            def pick(rng: random.Random) -> int:
                return rng.randrange(patients)

            def by_identifier(rng: random.Random) -> str:
                i = pick(rng)
                return f"/Patient?identifier={quote(mrn_system(i % 15))}|MRN{i:08d}"

            async def by_identifier_raw(rng: random.Random) -> bool:
                i = pick(rng)
                return bool(await raw("Patient", *exact("identifier", token_enc(mrn_system(i % 15), f"MRN{i:08d}"))))

            def by_family_birthdate(rng: random.Random) -> str:
                family, born = birth(pick(rng))
                return f"/Patient?family={quote(family)}&birthdate={born}"

            def born_within(family: str) -> str:
                """The code of the birth dates kept within a family name (keys.py ``SORTS_WITHIN``)."""
                return within_code("birthdate", "family", string_enc(normalize_string(family))[:-1])

            async def by_family_birthdate_raw(rng: random.Random) -> bool:  # the day's birth dates within the family
                family, born = birth(pick(rng))
                found = date_range(born, zone)
                assert found is not None
                low, code = found[0], born_within(family)
                return bool(await raw("Patient", f"{code}|L{sortable_int(low)}",
                                      f"{code}|L{sortable_int(low + MICROS_PER_DAY)}"))

            def sr_by_subject_status(rng: random.Random) -> str:
                i = pick(rng)
                status = patient_group(i, observations=0)[1]["status"]
                return f"/ServiceRequest?subject=Patient/{patient_id(i)}&status={status}"

            async def sr_raw(rng: random.Random) -> bool:
                i = pick(rng)
                return bool(await raw("ServiceRequest", *exact("subject", hexs(f"Patient/{patient_id(i)}"))))

            def dr_include(rng: random.Random) -> str:
                i = pick(rng)
                return f"/DiagnosticReport?subject=Patient/{patient_id(i)}&_include=DiagnosticReport:result"

            async def dr_include_raw(rng: random.Random) -> bool:
                i = pick(rng)
                reports = await raw("DiagnosticReport", *exact("subject", hexs(f"Patient/{patient_id(i)}")))
                await store.current_many("Observation", [f"ob{i:07d}0", f"ob{i:07d}1"])
                return bool(reports)

            def chained(rng: random.Random) -> str:
                i = pick(rng)
                return f"/DiagnosticReport?subject:Patient.identifier={quote(mrn_system(i % 15))}|MRN{i:08d}"

            async def chained_raw(rng: random.Random) -> bool:
                i = pick(rng)
                found = await raw("Patient", *exact("identifier", token_enc(mrn_system(i % 15), f"MRN{i:08d}")))
                return bool(await raw("DiagnosticReport", *exact("subject", hexs(f"Patient/{found[0].rid}"))))

            def has(rng: random.Random) -> str:
                i = pick(rng)
                authored = patient_group(i, observations=0)[1]["authoredOn"]
                return f"/Patient?_has:ServiceRequest:subject:authored={quote(authored)}"

            async def has_raw(rng: random.Random) -> bool:
                authored = patient_group(pick(rng), observations=0)[1]["authoredOn"]
                found = date_range(authored, zone)
                assert found is not None
                requests = await raw("ServiceRequest", f"authored|L{sortable_int(found[0])}",
                                     f"authored|L{sortable_int(found[1])}~", limit=1000)
                subjects = [v.index for v in requests]  # the subjects' ids are in the entries; fetch them
                rids = sorted({patient_id(int(r.rid[2:])) for r in requests})
                return bool(await store.current_many("Patient", rids)) and bool(subjects)

            # the Patient compartment's types and the parameters (as indexed) that place a resource in it
            compartment = {t: sorted({indexed_as(t, c)[0] for c in patient_compartment_params(t)})
                           for t in sorted(SUPPORTED_TYPES) if t != "Patient" and patient_compartment_params(t)}

            def everything(rng: random.Random) -> str:
                return f"/Patient/{patient_id(pick(rng))}/$everything"

            async def everything_raw(rng: random.Random) -> bool:  # each compartment range at once, then the matches
                pid = patient_id(pick(rng))
                ranges = [(t, *exact(code, hexs(f"Patient/{pid}")))
                          for t, codes in compartment.items() for code in codes]
                keys = await asyncio.gather(*(store.scan_index(t, low, high, after=None, limit=51)
                                              for t, low, high in ranges))
                found: dict[str, set[str]] = {"Patient": {pid}}
                for (t, _, _), hits in zip(ranges, keys, strict=True):
                    found.setdefault(t, set()).update(split_index_key(k)[1] for k in hits)
                read = await asyncio.gather(*(store.current_many(t, sorted(rids)) for t, rids in found.items() if rids))
                return len(read) > 1

            words = sorted({w.lower() for _, _, display in SR_CODES for w in display.split()})

            def sr_text(rng: random.Random) -> str:
                return f"/ServiceRequest?code:text={rng.choice(words)}&_count=20"

            async def sr_text_raw(rng: random.Random) -> bool:
                word = hexs(rng.choice(words))
                return bool(await raw("ServiceRequest", f"code:text|{word}", f"code:text|{word}~", limit=21))

            def content(rng: random.Random) -> str:  # a family name, found anywhere in the Patients' text
                return f"/Patient?_content={quote(birth(pick(rng))[0])}&_count=20"

            async def content_raw(rng: random.Random) -> bool:
                word = hexs(birth(pick(rng))[0].lower())
                return bool(await raw("Patient", "_content|", "_content|~", limit=21, containing=(word,)))

            def sounded(rng: random.Random) -> str:  # a Patient's Chinese name as typed in pinyin: wangxiaodong
                name = patient_group(pick(rng), observations=0)[0]["name"][0]
                return sound(normalize_string(name["family"] + "".join(name["given"])))

            def phonetic(rng: random.Random) -> str:
                return f"/Patient?phonetic={sounded(rng)}&_count=20"

            async def phonetic_raw(rng: random.Random) -> bool:
                heard = hexs(sounded(rng))
                return bool(await raw("Patient", f"phonetic:pinyin|{heard}", f"phonetic:pinyin|{heard}~", limit=21))

            def unassigned(rng: random.Random) -> str:  # active orders without a performer (all of this data set's)
                return "/ServiceRequest?status=active&performer:missing=true&_count=20"

            async def unassigned_raw(rng: random.Random) -> bool:  # the type's @lacks entries naming performer
                return bool(await raw("ServiceRequest", "@lacks|", "@lacks|~", limit=21, containing=(".performer.",)))

            def no_organization(rng: random.Random) -> str:  # every Patient has one: the whole @lacks range is read
                return "/Patient?organization:missing=true"

            async def no_organization_raw(rng: random.Random) -> bool:
                return not await raw("Patient", "@lacks|", "@lacks|~", limit=21, containing=(".organization.",))

            def born_in_a_week(rng: random.Random) -> str:  # a date range bounded on both sides: ~20 Patients
                _, born = birth(pick(rng))
                return f"/Patient?birthdate=ge{born}&birthdate=lt{date.fromisoformat(born) + timedelta(days=7)}" \
                    "&_count=50"

            async def born_in_a_week_raw(rng: random.Random) -> bool:  # the week's birthdate entries from a day
                _, born = birth(pick(rng))  # before (the longest birth date, date_spans.py), and their Patients
                found = date_range(born, zone)
                assert found is not None
                return bool(await raw("Patient", f"birthdate|L{sortable_int(found[0] - MICROS_PER_DAY)}",
                                      f"birthdate|L{sortable_int(found[0] + 7 * MICROS_PER_DAY)}"))

            def name_and_birth_year(rng: random.Random) -> str:  # each clause hundreds to thousands of Patients
                family, born = birth(pick(rng))
                return f"/Patient?family={quote(family)}&birthdate={born[:4]}&_count=20"

            async def name_and_birth_year_raw(rng: random.Random) -> bool:  # a page of the year's birth dates
                family, born = birth(pick(rng))  # within the family (~60 Patients) and those Patients
                found = date_range(born[:4], zone)
                assert found is not None
                code = born_within(family)
                return bool(await raw("Patient", f"{code}|L{sortable_int(found[0])}",
                                      f"{code}|L{sortable_int(found[1])}~", limit=21))

            def prefix_and_birth_year(rng: random.Random) -> str:  # Hu starts Huang, Li starts Liu (pinyin names)
                family = rng.choice(["Hu", "Li"])
                return f"/Patient?family={family}&birthdate={birth(pick(rng))[1][:4]}&_count=20"

            async def prefix_and_birth_year_raw(rng: random.Random) -> bool:  # the year's birth dates within each
                family = rng.choice(["Hu", "Li"])  # of the two families, a page of them, and those Patients
                found = date_range(birth(pick(rng))[1][:4], zone)
                assert found is not None
                keys: list[str] = []
                for code in (born_within(family), born_within({"Hu": "Huang", "Li": "Liu"}[family])):
                    keys += await store.scan_index("Patient", f"{code}|L{sortable_int(found[0])}",
                                                   f"{code}|L{sortable_int(found[1])}~", after=None, limit=21)
                rids = sorted({split_index_key(k)[1] for k in keys})[:21]
                return bool(await store.current_many("Patient", rids))

            # chains and _has whose sub-search has more than search_chain_max (1,000) matches: checked on each
            # candidate (engine ``Join``); the store rows read what an indexed join would for the same page
            def reports_of_orders(rng: random.Random) -> str:  # one patient's reports whose order has a status
                i = pick(rng)
                status = patient_group(i, observations=0)[1]["status"]  # one of five: ~20,000 orders each
                return (f"/DiagnosticReport?subject=Patient/{patient_id(i)}"
                        f"&based-on:ServiceRequest.status={status}")

            async def reports_of_orders_raw(rng: random.Random) -> bool:  # the patient's reports, then their orders
                i = pick(rng)
                reports = await raw("DiagnosticReport", *exact("subject", hexs(f"Patient/{patient_id(i)}")))
                orders = sorted({ref["reference"].split("/", 1)[1] for r in reports
                                 for ref in orjson.loads(r.body).get("basedOn", [])})
                return bool(await store.current_many("ServiceRequest", orders))

            def active_at_hospital(rng: random.Random) -> str:  # a hospital's patients with an active order
                return (f"/Patient?_has:ServiceRequest:subject:status=active"
                        f"&organization=Organization/h{pick(rng) % 15:02d}&_count=20")

            async def active_at_hospital_raw(rng: random.Random) -> bool:
                """A hundred of the hospital's Patients (one in five has an active order: a page of 20), the
                orders' entries naming each, and those orders."""
                org = hexs(f"Organization/h{pick(rng) % 15:02d}")
                patients = await raw("Patient", *exact("organization", org), limit=100)
                ranges = [("ServiceRequest", *exact("subject", hexs(f"Patient/{v.rid}"))) for v in patients]
                keys = await store.scan_index_many(ranges, limit=8)
                rids = sorted({split_index_key(k)[1] for found in keys for k in found})
                return bool(await store.current_many("ServiceRequest", rids))

            def results_by_birth_year(rng: random.Random) -> str:  # a chain alone: ~1,100 Patients, 2,200 results
                return f"/Observation?subject:Patient.birthdate={birth(pick(rng))[1][:4]}&_count=20"

            async def results_by_birth_year_raw(rng: random.Random) -> bool:
                """The year's birthdate keys (~1,100), the result entries naming ten of those Patients, and their
                twenty Observations."""
                found = date_range(birth(pick(rng))[1][:4], zone)
                assert found is not None
                keys = await store.scan_index("Patient", f"birthdate|L{sortable_int(found[0])}",
                                              f"birthdate|L{sortable_int(found[1])}~", after=None, limit=4096)
                pids = sorted({split_index_key(k)[1] for k in keys})[:10]
                ranges = [("Observation", *exact("subject", hexs(f"Patient/{pid}"))) for pid in pids]
                hits = await store.scan_index_many(ranges, limit=8)
                rids = sorted({split_index_key(k)[1] for found in hits for k in found})
                return bool(await store.current_many("Observation", rids))

            def results_in_an_hour(rng: random.Random) -> str:  # ~600 Observations of a morning: page 1
                day = f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
                return (f"/Observation?date=ge{day}T09:00:00%2B08:00&date=lt{day}T10:00:00%2B08:00&_count=20")

            async def results_in_an_hour_raw(rng: random.Random) -> bool:
                day = f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
                found = date_range(f"{day}T09:00:00+08:00", zone)
                assert found is not None
                return bool(await raw("Observation", f"date|L{sortable_int(found[0] - 1_000_000)}",
                                      f"date|L{sortable_int(found[0] + 3_600_000_000)}", limit=21))

            def active_of_a_day(rng: random.Random) -> str:  # a day's ~300 orders, ~60 of them active: page 1
                day = f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
                return f"/ServiceRequest?status=active&authored={day}&_count=20"

            async def active_of_a_day_raw(rng: random.Random) -> bool:  # the day's entries within the status
                found = date_range(f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}", zone)
                assert found is not None
                return bool(await raw("ServiceRequest", f"{active}|L{sortable_int(found[0])}",
                                      f"{active}|L{sortable_int(found[1])}~", limit=21))

            async def next_page(url: str) -> str | None:
                """The next link of the page at ``url`` (None on the last page)."""
                async with http.get(hub.base + url) as answer:
                    page = await answer.json(content_type=None)
                return next((link["url"][len(hub.base):] for link in page["link"] if link["relation"] == "next"),
                            None)

            async def page_urls(first: str) -> dict[int, Url]:
                """Pages 1 and 50 of a result (each as a constant Url), following its next links."""
                urls: dict[int, str] = {}
                url: str | None = first
                for number in range(1, 51):
                    if url is None:  # a small data set: the deepest page there is
                        urls[50] = urls[number - 1]
                        break
                    urls[number] = url
                    url = await next_page(url)
                return {number: (lambda _rng, fixed=urls[number]: fixed) for number in (1, 50)}

            # the hub gives the versions of a store loaded by an older hub their history keys (another process)
            while not await store.history_keys_complete():  # noqa: ASYNC110
                await asyncio.sleep(1)
            # and re-indexes a store loaded by a hub of an older index layout (service/reindex.py, upgrade): before
            # any page is followed, as the sorted pages walk the index entries the job rewrites
            while await store.db["jobs"].find_one({"kind": "reindex", "status": "running"}):  # noqa: ASYNC110
                await asyncio.sleep(1)
            pages = await page_urls("/ServiceRequest?status=active&_count=20")

            async def page_raw(rng: random.Random) -> bool:
                return bool(await raw("ServiceRequest", *exact("status", token_enc(None, "active")), limit=21))

            async def last_page(first: str) -> Url:
                """The last page of a result (a constant Url), following its next links to the end."""
                url, at = first, first
                while at is not None:
                    url, at = at, await next_page(at)
                return lambda _rng, fixed=url: fixed

            # a patient list by name: every Patient, read in the order of the family entries
            by_name = await page_urls("/Patient?_sort=family&_count=20")
            # its last page: where the walk finds no Patient without a family (their @absent and ~ entries)
            by_name_last = await last_page("/Patient?_sort=family&_count=20")

            async def by_name_raw(rng: random.Random) -> bool:  # the first 21 family entries and their Patients
                return bool(await raw("Patient", "family|", "family|~", limit=21))

            # a patient index by family and given name: each family a group of ~5,500 (18 families), which a page
            # takes in the order of the given names kept within that family (engine ``_by_second_key``)
            by_names = await page_urls("/Patient?_sort=family,given&_count=20")
            within_first = f"{within_code('given', 'family', string_enc('chen')[:-1])}|"  # chen: the first family

            async def by_names_raw(rng: random.Random) -> bool:
                """The first family's first entry, the first 21 given names' entries within it, and those
                Patients: what the store reads for that page with no sorting at all."""
                await store.scan_index("Patient", "family|", "family|~", after=None, limit=1)
                keys = await store.scan_index("Patient", within_first, f"{within_first}~", after=None, limit=21)
                return bool(await store.current_many("Patient", sorted({split_index_key(k)[1] for k in keys})))

            # a worklist: every active order, latest first; read in the order of the authored entries
            worklist = await page_urls("/ServiceRequest?status=active&_sort=-authored&_count=20")

            active = within_code("authored", "status", within_value("token", "active"))

            async def worklist_raw(rng: random.Random) -> bool:  # the latest 21 active orders' entries and the orders
                return bool(await raw("ServiceRequest", f"{active}|L", f"{active}|M", limit=21, backward=True))

            # the same worklist urgent orders apart: by priority (routine: ~50,000 orders, ~10,000 of them active),
            # each priority latest first, walked down its orders' authored entries (engine ``_by_second_key``); the
            # store row is the plain worklist's, as if the store had entries of active orders by priority and date
            by_priority = await page_urls("/ServiceRequest?status=active&_sort=priority,-authored&_count=20")

            history_pages = await page_urls("/Patient/_history?_count=20")

            async def history_raw(rng: random.Random) -> bool:
                page = await store.history_page(rtype="Patient", since=None, at=None, count=20, cursor=None)
                return bool(page.versions)

            rows: list[tuple[str, Url, Op]] = [
                ("Patient by identifier", by_identifier, by_identifier_raw),
                ("Patient by family+birthdate", by_family_birthdate, by_family_birthdate_raw),
                ("ServiceRequest by subject+status", sr_by_subject_status, sr_raw),
                ("DiagnosticReport by subject, _include=result", dr_include, dr_include_raw),
                ("chained: DiagnosticReport?subject:Patient.identifier", chained, chained_raw),
                ("_has: Patient?_has:ServiceRequest:subject:authored", has, has_raw),
                ("Patient/<id>/$everything (5 resources, 1 included)", everything, everything_raw),
                ("ServiceRequest?code:text=<word> page 1 (_count=20)", sr_text, sr_text_raw),
                ("Patient?_content=<family name> page 1 (_count=20)", content, content_raw),
                ("Patient?phonetic=<pinyin of the name> (_count=20)", phonetic, phonetic_raw),
                ("ServiceRequest?status=active&performer:missing=true", unassigned, unassigned_raw),
                ("Patient?organization:missing=true (no match)", no_organization, no_organization_raw),
                ("Patient?birthdate=ge…&birthdate=lt… (a week, ~20)", born_in_a_week, born_in_a_week_raw),
                ("Observation?date=ge…&date=lt… (an hour) page 1", results_in_an_hour, results_in_an_hour_raw),
                ("ServiceRequest?status=active&authored=<day> page 1", active_of_a_day, active_of_a_day_raw),
                ("Patient?family=<family>&birthdate=<year> (_count=20)", name_and_birth_year,
                 name_and_birth_year_raw),
                ("Patient?family=Hu or Li (prefixes of Huang, Liu)&birthdate=<year>", prefix_and_birth_year,
                 prefix_and_birth_year_raw),
                ("chain over 1,000: DiagnosticReport?subject=…&based-on:…status", reports_of_orders,
                 reports_of_orders_raw),
                ("_has over 1,000: Patient?_has:…status=active&organization", active_at_hospital,
                 active_at_hospital_raw),
                ("chain over 1,000 alone: Observation?subject:Patient.birthdate", results_by_birth_year,
                 results_by_birth_year_raw),
                ("ServiceRequest?status=active&_sort=priority,-authored p1", by_priority[1], worklist_raw),
                ("ServiceRequest?status=active&_sort=priority,-authored p50", by_priority[50], worklist_raw),
                ("Patient?_sort=family page 1 (_count=20)", by_name[1], by_name_raw),
                ("Patient?_sort=family page 50 (_count=20)", by_name[50], by_name_raw),
                ("Patient?_sort=family,given page 1 (_count=20)", by_names[1], by_names_raw),
                ("Patient?_sort=family,given page 50 (_count=20)", by_names[50], by_name_raw),
                ("ServiceRequest?status=active&_sort=-authored page 1", worklist[1], worklist_raw),
                ("ServiceRequest?status=active&_sort=-authored page 50", worklist[50], worklist_raw),
                ("ServiceRequest?status=active page 1 (_count=20)", pages[1], page_raw),
                ("ServiceRequest?status=active page 50 (_count=20)", pages[50], page_raw),
                ("Patient/_history page 1 (_count=20)", history_pages[1], history_raw),
                ("Patient/_history page 50 (_count=20)", history_pages[50], history_raw),
            ]
            print(f"{'search':55} {'p50':>7} {'p95':>7} {'p99':>7} {'req/s':>7}   store: {'p50':>6} {'p95':>6}")
            results: dict[str, Result] = {}
            driver = "wrk (C, one thread)" if wrk else "aiohttp (install wrk for a lighter client)"
            print(f"hub rows driven by {driver}; store rows by PyMongo", flush=True)
            if only is not None:  # the rows asked for alone: none of the comparisons between rows below
                rows = [row for row in rows if only.lower() in row[0].lower()]
            for name, url_of, raw_op in rows:
                got = await drive_urls(http, hub, clients, seconds, url_of, wrk=wrk)
                store_time = await drive(clients, seconds / 2, raw_op)
                results[name] = got
                print(f"{name:55} {got.pct(50):6.1f}ms {got.pct(95):6.1f}ms {got.pct(99):6.1f}ms {got.rate:7.0f}"
                      f"   store: {store_time.pct(50):5.1f}ms {store_time.pct(95):5.1f}ms", flush=True)
            if only is not None:
                await client.close()
                return
            first, fiftieth = results[rows[-4][0]], results[rows[-3][0]]
            print(f"page 50 / page 1 at p50: {fiftieth.pct(50) / first.pct(50):.2f}x (search), "
                  f"{results[rows[-5][0]].pct(50) / results[rows[-6][0]].pct(50):.2f}x (sorted), "
                  f"{results[rows[-1][0]].pct(50) / results[rows[-2][0]].pct(50):.2f}x (history); "
                  f"hub RSS {hub_rss(hub.pid):.0f} MB")
            # one client, after the rows above: at 16 clients a request slower than the row's time outlives it
            # and slows the rows after it
            last = await drive_urls(http, hub, 1, seconds, by_name_last, wrk=wrk)
            print(f"Patient?_sort=family last page (_count=20), one client: p50 {last.pct(50):.1f} ms, "
                  f"{last.count} requests; page 1 at 16 clients p50 "
                  f"{results['Patient?_sort=family page 1 (_count=20)'].pct(50):.1f} ms", flush=True)
            await substring_scans(http, hub.base, store)
            await client.close()


async def substring_scans(http: aiohttp.ClientSession, base: str, store: ResourceStore) -> None:
    """Searches that read a whole parameter's keys for a substring (string ``:contains``, token ``system|``,
    ``_content``) and match nothing, from one client (median of 3): the hub, the store's filtered scan (the
    same ``$regex`` on the ``_id`` range) and the range read whole and filtered in Python (what the hub did
    before the scan was filtered in the store)."""
    async def median(op: Callable[[], Awaitable[Any]]) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            await op()
            times.append((time.perf_counter() - started) * 1000)
        return sorted(times)[1]

    async def hub_get(url: str) -> None:
        async with http.get(base + url) as answer:
            assert answer.status == 200, await answer.text()
            await answer.read()

    async def read_whole(low: str, wanted: str) -> int:
        keys = store.search_index.find({"_id": {"$gte": f"Patient|{low}", "$lt": f"Patient|{low}~"}})
        return sum([wanted in d["_id"] async for d in keys])

    nowhere = "http://nowhere.example/mrn"
    print(f"{'no match, one client (median of 3)':55} {'hub':>7} {'store, filtered':>16} {'store, read whole':>18}")
    for name, url, low, wanted in (
            ("Patient?name:contains=qqq", "/Patient?name:contains=qqq", "name|", hexs("qqq")),
            ("Patient?identifier=<unknown system>|", f"/Patient?identifier={quote(nowhere)}|", "identifier|",
             f".{hexs(nowhere)}|"),
            ("Patient?_content=qqq", "/Patient?_content=qqq", "_content|", hexs("qqq"))):
        hub_ms = await median(lambda url=url: hub_get(url))
        filtered = await median(lambda low=low, wanted=wanted: store.scan_index(
            "Patient", low, low + "~", after=None, limit=21, containing=(wanted,)))
        whole = await median(lambda low=low, wanted=wanted: read_whole(low, wanted))
        print(f"{name:55} {hub_ms:6.0f}ms {filtered:15.0f}ms {whole:17.0f}ms", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--aiohttp", action="store_true", help="drive the hub with aiohttp even if wrk is installed")
    parser.add_argument("--store-dir", type=Path, default=None,
                        help="keep the store here; a later run with the same --patients skips loading")
    parser.add_argument("--only", default=None, help="drive only the search rows whose name contains this text")
    args = parser.parse_args()
    asyncio.run(main(args.patients, args.seconds, args.clients, args.store_dir,
                     wrk=shutil.which("wrk") is not None and not args.aiohttp, only=args.only))
