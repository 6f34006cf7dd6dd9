"""Transaction ingest: Bundles of 100 entries (a Patient, its ServiceRequests, Observations and
DiagnosticReports, dated, linked by urn:uuid references) from 4 clients, in resources/s, next to the raw driver
inserting the same documents from 4 clients on the same store in the same run, one by one and 100 per
insert_many.

    .venv/bin/python -m bench.bundle_ingest --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import aiohttp
from pymongo import AsyncMongoClient

from bench.harness import machine_line, patient, running_hub

ENTRIES = 100


def transaction(n: int) -> dict[str, Any]:
    """One patient and 99 linked resources, as a member hospital would send a referral package."""
    p_urn = f"urn:uuid:{uuid.uuid4()}"
    entries: list[dict[str, Any]] = [{"fullUrl": p_urn, "resource": patient(n),
                                      "request": {"method": "POST", "url": "Patient"}}]
    for i in range(ENTRIES - 1):
        kind = i % 3
        when = f"2026-{1 + n % 12:02d}-{1 + i % 28:02d}T{8 + i % 10:02d}:{n % 60:02d}:00+08:00"
        if kind == 0:
            res = {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                   "code": {"text": "CT chest"}, "subject": {"reference": p_urn}, "authoredOn": when}
        elif kind == 1:
            res = {"resourceType": "Observation", "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "2039-6"}]},
                   "subject": {"reference": p_urn}, "effectiveDateTime": when,
                   "valueQuantity": {"value": 4.2 + i, "unit": "ng/mL"}}
        else:
            res = {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "CT report"},
                   "subject": {"reference": p_urn}, "effectiveDateTime": when, "issued": when}
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": res,
                        "request": {"method": "POST", "url": res["resourceType"]}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


async def main(seconds: float, clients: int) -> None:
    async with running_hub() as hub:
        print(f"{machine_line()}; {clients} clients, {seconds:.0f} s per row, {ENTRIES} entries per Bundle")
        counter = iter(range(10**9))
        done = failed = 0
        latencies: list[float] = []

        async with aiohttp.ClientSession(headers=hub.headers) as http:
            async def hub_worker(deadline: float) -> None:
                nonlocal done, failed
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    async with http.post(hub.base, json=transaction(next(counter))) as r:
                        await r.read()
                        if r.status == 200:
                            done += ENTRIES
                        else:
                            failed += 1
                    latencies.append(time.perf_counter() - t0)

            start = time.perf_counter()
            await asyncio.gather(*(hub_worker(start + seconds) for _ in range(clients)))
            hub_elapsed = time.perf_counter() - start

        raw_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(hub.store_uri)
        coll = raw_client["rawbench"]["ingest"]
        raw_done = 0

        async def raw_worker(deadline: float) -> None:
            nonlocal raw_done
            while time.perf_counter() < deadline:
                for entry in transaction(next(counter))["entry"]:
                    await coll.insert_one({"_id": str(uuid.uuid4()), **entry["resource"]})
                raw_done += ENTRIES

        start = time.perf_counter()
        await asyncio.gather(*(raw_worker(start + seconds) for _ in range(clients)))
        raw_elapsed = time.perf_counter() - start
        many_done = 0

        async def raw_many_worker(deadline: float) -> None:
            nonlocal many_done
            while time.perf_counter() < deadline:
                docs = [{"_id": str(uuid.uuid4()), **e["resource"]} for e in transaction(next(counter))["entry"]]
                await coll.insert_many(docs)
                many_done += ENTRIES

        start = time.perf_counter()
        await asyncio.gather(*(raw_many_worker(start + seconds) for _ in range(clients)))
        many_elapsed = time.perf_counter() - start
        await raw_client.close()

        latencies.sort()
        p50 = latencies[len(latencies) // 2] * 1000 if latencies else float("nan")
        p95 = latencies[int(len(latencies) * 0.95)] * 1000 if latencies else float("nan")
        hub_rate, raw_rate = done / hub_elapsed, raw_done / raw_elapsed
        print(f"hub transactions: {hub_rate:,.0f} resources/s ({len(latencies)} Bundles, p50 {p50:.0f} ms, "
              f"p95 {p95:.0f} ms per Bundle, {failed} failed)")
        many_rate = many_done / many_elapsed
        print(f"raw insert_one of the same documents: {raw_rate:,.0f} resources/s (hub: {hub_rate / raw_rate:.0%})")
        print(f"raw insert_many, 100 per call: {many_rate:,.0f} resources/s (hub: {hub_rate / many_rate:.0%})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.clients))
