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
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from pymongo import AsyncMongoClient

from fhir_server.auth.tokens import mint_token
from fhir_server.embedded_store import EmbeddedStore, free_port
from fhir_server.settings import Settings


def patient(i: int) -> dict[str, Any]:
    return {"resourceType": "Patient",
            "identifier": [{"system": "urn:oid:2.16.840.1.113883.2.4.6.3", "value": f"{i:09d}"}],
            "name": [{"family": "王", "given": ["小东"], "text": "王小东"}], "gender": "male",
            "birthDate": "1970-03-01", "telecom": [{"system": "phone", "value": "+86 21 5555 0000"}],
            "address": [{"city": "上海", "district": "徐汇区", "country": "CN"}]}


@dataclass
class Result:
    count: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        qs = statistics.quantiles(self.latencies, n=100, method="inclusive")
        return qs[int(p) - 1] * 1000


async def drive(clients: int, seconds: float, op: Callable[[random.Random], Awaitable[bool]]) -> Result:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    errors = 0

    async def worker(seed: int) -> None:
        nonlocal errors
        rng = random.Random(seed)
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            ok = await op(rng)
            latencies.append(time.perf_counter() - t0)
            if not ok:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    if errors:
        print(f"    ({errors} failed requests)")
    return Result(len(latencies), elapsed, latencies)


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
            if r.status != 200:
                self.failures[r.status] = self.failures.get(r.status, 0) + 1
            return r.status == 200

    async def raw_update(self, rng: random.Random) -> bool:
        await self.raw.replace_one({"_id": rng.choice(self.raw_ids)}, patient(rng.randrange(10**6)))
        return True

    async def hub_mix(self, rng: random.Random) -> bool:
        x = rng.random()  # 20 % create, 55 % read, 20 % update, 5 % delete
        if x < 0.20:
            return await self.hub_create(rng)
        if x < 0.75:
            return await self.hub_read(rng)
        if x < 0.95:
            return await self.hub_update(rng)
        rid = self.ids.pop(rng.randrange(len(self.ids)))
        async with self.http.delete(f"{self.base}/Patient/{rid}") as r:
            await r.read()
            return r.status == 204

    async def raw_mix(self, rng: random.Random) -> bool:
        x = rng.random()
        if x < 0.20:
            return await self.raw_create(rng)
        if x < 0.75:
            return await self.raw_read(rng)
        if x < 0.95:
            return await self.raw_update(rng)
        await self.raw.delete_one({"_id": self.raw_ids.pop(rng.randrange(len(self.raw_ids)))})
        return True


def hub_rss(pid: int) -> float:
    """RSS of the hub: its process and its worker processes, if any."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(k) for k in children.read_text().split()] if children.exists() else []
    return rss_mb(pid) + sum(rss_mb(k) for k in kids)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def main(seconds: float, levels: list[int], workers: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="medunion-bench-"))
    store = EmbeddedStore(data_dir=tmp / "store", port=free_port())
    store.start()
    port = free_port()
    env = {**os.environ, "MONGODB_URI": store.uri, "MEDUNION_HOME": str(tmp / "home"),
           "MEDUNION_HTTP_PORT": str(port), "MEDUNION_WORKERS": str(workers)}
    hub = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "run"], env=env,  # noqa: ASYNC220
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/fhir"
    try:
        for _ in range(300):
            try:
                async with aiohttp.ClientSession() as s, s.get(f"{base}/metadata") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        at_rest = hub_rss(hub.pid)
        os.environ.update({k: v for k, v in env.items() if k.startswith("MEDUNION_")})
        token = mint_token(Settings(), subject="bench", scope="system/*.cruds")
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
        raw_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(store.uri, maxPoolSize=128)
        raw = raw_client["rawbench"]["patients"]

        print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python "
              f"{platform.python_version()}; store: FerretDB 1.24.2 (SQLite) on loopback; {seconds:.0f} s per row")
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
    finally:
        hub.terminate()
        hub.wait(timeout=15)
        store.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", default="16,64")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("MEDUNION_WORKERS", "1")))
    args = parser.parse_args()
    asyncio.run(main(args.seconds, [int(c) for c in args.clients.split(",")], args.workers))
