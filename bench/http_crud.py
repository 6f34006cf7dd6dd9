"""CRUD benchmark: the hub over HTTP against the raw driver on the same store, in the same run.

Starts a throwaway FerretDB and the hub (`medunion run`) on free loopback ports, then for 16 and 64
concurrent clients measures create, read, update and a CRUD mix through the hub, and insert, find-by-id and
replace-by-id with PyMongo's async driver directly. Prints requests/s and p50/p95/p99 side by side, and the
hub's resident memory at rest and after the load.

    make bench            # or: .venv/bin/python -m bench.http_crud --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import uuid
from typing import Any

import aiohttp
import orjson
from pymongo import AsyncMongoClient

from bench.harness import drive, hub_rss, machine_line, patient, running_hub


class Workload:
    """The same four operations through the hub (HTTP) and through the raw driver (PyMongo async)."""

    def __init__(self, http: aiohttp.ClientSession, base: str, raw: Any) -> None:
        self.http, self.base, self.raw = http, base, raw
        self.ids: list[str] = []
        self.raw_ids: list[str] = []
        self.counter = iter(range(10**9))
        self.failures: dict[int, int] = {}

    async def hub_create(self, rng: random.Random) -> bool:
        async with self.http.post(f"{self.base}/Patient", data=orjson.dumps(patient(next(self.counter))),
                                  headers={"Prefer": "return=minimal"}) as r:
            await r.read()
            if r.status == 201:
                self.ids.append(r.headers["Location"].split("/")[-3])
            return r.status == 201

    async def raw_create(self, rng: random.Random) -> bool:
        rid = str(uuid.uuid4())
        await self.raw.insert_one({"_id": rid, **patient(next(self.counter))})
        self.raw_ids.append(rid)
        return True

    async def hub_read(self, rng: random.Random) -> bool:
        async with self.http.get(f"{self.base}/Patient/{rng.choice(self.ids)}") as r:
            await r.read()
            return r.status == 200

    async def raw_read(self, rng: random.Random) -> bool:
        return await self.raw.find_one({"_id": rng.choice(self.raw_ids)}) is not None

    async def hub_update(self, rng: random.Random) -> bool:
        rid = rng.choice(self.ids)
        body = patient(rng.randrange(10**6)) | {"id": rid}
        async with self.http.put(f"{self.base}/Patient/{rid}", data=orjson.dumps(body),
                                 headers={"Prefer": "return=minimal"}) as r:
            await r.read()
            # 201: a delete of the mix removed it while this update was on its way, and the PUT created it again
            # (FHIR R4 http.html#update), as it should
            ok = r.status == 200 or (r.status == 201 and rid not in self.ids)
            if not ok:
                self.failures[r.status] = self.failures.get(r.status, 0) + 1
            return ok

    async def raw_update(self, rng: random.Random) -> bool:
        await self.raw.replace_one({"_id": rng.choice(self.raw_ids)}, patient(rng.randrange(10**6)))
        return True

    async def hub_delete(self, rng: random.Random) -> bool:
        rid = self.ids.pop(rng.randrange(len(self.ids)))
        async with self.http.delete(f"{self.base}/Patient/{rid}") as r:
            await r.read()
            return r.status == 204

    async def raw_delete(self, rng: random.Random) -> bool:
        await self.raw.delete_one({"_id": self.raw_ids.pop(rng.randrange(len(self.raw_ids)))})
        return True

    async def hub_mix(self, rng: random.Random) -> bool:
        return await getattr(self, f"hub_{mix_operation(rng)}")(rng)  # type: ignore[no-any-return]

    async def raw_mix(self, rng: random.Random) -> bool:
        return await getattr(self, f"raw_{mix_operation(rng)}")(rng)  # type: ignore[no-any-return]


def mix_operation(rng: random.Random) -> str:
    """The CRUD mix: 20 % create, 55 % read, 20 % update, 5 % delete."""
    x = rng.random()
    return "create" if x < 0.20 else "read" if x < 0.75 else "update" if x < 0.95 else "delete"


async def main(seconds: float, levels: list[int], workers: int) -> None:
    async with running_hub(workers=workers) as hub:
        at_rest = hub_rss(hub.pid)
        base, headers = hub.base, hub.headers
        raw_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(hub.store_uri, maxPoolSize=128)
        raw = raw_client["rawbench"]["patients"]

        print(f"{machine_line()}; {seconds:.0f} s per row")
        print(f"hub memory at rest: {at_rest:.0f} MB RSS ({workers} worker process(es))")
        header = (f"{'operation':<16}{'clients':>8} | {'hub req/s':>10}{'p50':>8}{'p95':>8}{'p99':>8} | "
                  f"{'raw op/s':>10}{'p50':>8}{'p95':>8}{'p99':>8} | {'ratio':>6}")
        print(header)
        print("-" * len(header))

        for clients in levels:
            conn = aiohttp.TCPConnector(limit=clients)
            async with aiohttp.ClientSession(connector=conn, headers=headers) as http:
                work = Workload(http, base, raw)
                for name, hub_op, raw_op in [("create Patient", work.hub_create, work.raw_create),
                                             ("read Patient", work.hub_read, work.raw_read),
                                             ("update Patient", work.hub_update, work.raw_update),
                                             ("CRUD mix", work.hub_mix, work.raw_mix)]:
                    h = await drive(clients, seconds, hub_op)
                    b = await drive(clients, seconds, raw_op)
                    print(f"{name:<16}{clients:>8} | {h.rate:>10.0f}{h.pct(50):>8.1f}{h.pct(95):>8.1f}"
                          f"{h.pct(99):>8.1f} | {b.rate:>10.0f}{b.pct(50):>8.1f}{b.pct(95):>8.1f}{b.pct(99):>8.1f} |"
                          f" {h.rate / b.rate:>5.0%}")
                    if work.failures:
                        print(f"    failed updates by status: {work.failures}")
                        work.failures.clear()
        print("latencies in ms; ratio = hub req/s / raw driver op/s on the same store")
        print(f"hub memory after the load: {hub_rss(hub.pid):.0f} MB RSS")
        await raw_client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", default="16,64")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("MEDUNION_WORKERS", "1")))
    args = parser.parse_args()
    asyncio.run(main(args.seconds, [int(c) for c in args.clients.split(",")], args.workers))
