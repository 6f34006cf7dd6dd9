"""What the benchmarks share: a throwaway FerretDB and hub on loopback, a load driver, percentiles, memory."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

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
    percentiles: dict[int, float] | None = None  # ms, when the driver reported percentiles, not latencies

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def pct(self, p: float) -> float:
        if self.percentiles is not None:
            return self.percentiles[int(p)]
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


# wrk's script: requests cycle through a file of paths; at the end, the figures as one JSON line
_WRK_SCRIPT = """
local paths = {}
for line in io.lines(os.getenv("MEDUNION_WRK_PATHS")) do paths[#paths + 1] = line end
local next_path = 0
wrk.headers["Authorization"] = os.getenv("MEDUNION_WRK_AUTH")
request = function()
  next_path = next_path % #paths + 1
  return wrk.format("GET", paths[next_path])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('MEDUNION {"count": %d, "us": %d, "p50": %d, "p95": %d, "p99": %d, "failed": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    e.status + e.connect + e.read + e.write + e.timeout))
end
"""


async def drive_urls(http: aiohttp.ClientSession, hub: RunningHub, clients: int, seconds: float,
                     url_of: Callable[[random.Random], str], *, wrk: bool) -> Result:
    """GETs of ``hub.base + url_of(rng)`` from ``clients`` connections for ``seconds``. With ``wrk``: by wrk
    (C, one thread; it takes a few % of a core where aiohttp took 15-18 %, CPU the hub shares on this
    machine) over 5,000 paths made in advance; else by aiohttp."""
    if not wrk:
        async def get(rng: random.Random) -> bool:
            async with http.get(hub.base + url_of(rng)) as answer:
                await answer.read()
                return answer.status == 200
        return await drive(clients, seconds, get)
    rng = random.Random(7)
    base = urlsplit(hub.base)
    prefix, origin = base.path, f"{base.scheme}://{base.netloc}"
    with tempfile.TemporaryDirectory(prefix="medunion-wrk-") as tmp:
        paths, script = Path(tmp) / "paths.txt", Path(tmp) / "drive.lua"
        paths.write_text("".join(f"{prefix}{url_of(rng)}\n" for _ in range(5000)), encoding="utf-8")
        script.write_text(_WRK_SCRIPT, encoding="utf-8")
        env = {**os.environ, "MEDUNION_WRK_PATHS": str(paths), "MEDUNION_WRK_AUTH": hub.headers["Authorization"]}
        process = await asyncio.create_subprocess_exec(
            "wrk", "-t1", f"-c{clients}", f"-d{seconds:.0f}s", "--timeout", "60s",  # a slow request is measured,
            "-s", str(script), origin, env=env,  # not dropped as a 2 s timeout
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await process.communicate()
    line = next((x for x in out.decode().splitlines() if x.startswith("MEDUNION ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.decode()[-500:]}")
    got = json.loads(line[len("MEDUNION "):])
    if got["failed"]:
        print(f"    ({got['failed']} failed requests)")
    return Result(got["count"], got["us"] / 1e6, [],
                  {p: got[f"p{p}"] / 1000 for p in (50, 95, 99)})


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


@dataclass
class RunningHub:
    base: str
    headers: dict[str, str]
    store_uri: str
    pid: int


@asynccontextmanager
async def running_hub(*, workers: int = 1, data_dir: Path | None = None) -> AsyncIterator[RunningHub]:
    """A FerretDB and `medunion run` against it, both on free loopback ports; the store is throwaway unless
    ``data_dir`` names a folder to keep it in (a large data set loaded once, measured many times)."""
    tmp = data_dir or Path(tempfile.mkdtemp(prefix="medunion-bench-"))
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
        os.environ.update({k: v for k, v in env.items() if k.startswith("MEDUNION_")})
        token = mint_token(Settings(), subject="bench", scope="system/*.cruds")
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
        yield RunningHub(base=base, headers=headers, store_uri=store.uri, pid=hub.pid)
    finally:
        hub.terminate()
        hub.wait(timeout=15)
        store.stop()
        if data_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)


def machine_line() -> str:
    return (f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}; store: FerretDB 1.24.2 (SQLite) on loopback")
