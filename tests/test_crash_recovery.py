"""Kill the hub (SIGKILL) in the middle of a write load, restart it, and check nothing is lost or half-visible."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Hub, start_hub, stop_hub

RESOURCES = 12
WRITERS = 8


def _load(hub: Hub, acked: list[tuple[str, int, dict[str, object]]], stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    with hub.client() as client:
        while not stop.is_set():
            rid = f"crash-{rng.randrange(RESOURCES)}"
            body = {"resourceType": "Patient", "id": rid, "name": [{"family": f"w{seed}-{rng.random()}"}]}
            try:
                if rng.random() < 0.1:
                    r = client.post("/Patient", json={"resourceType": "Patient", "name": [{"family": f"new{seed}"}]})
                else:
                    r = client.put(f"/Patient/{rid}", json=body)
            except httpx.TransportError:
                return  # the hub died under us: this write is unacknowledged
            if r.status_code in (200, 201):
                doc = r.json()
                acked.append((doc["id"], int(doc["meta"]["versionId"]), doc))


def test_kill_mid_load_loses_no_acknowledged_write(store_uri: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    database = f"crash{int(time.time())}"
    hub = start_hub(store_uri, home, database=database)
    acked: list[tuple[str, int, dict[str, object]]] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_load, args=(hub, acked, stop, i)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    hub.process.send_signal(signal.SIGKILL)  # mid-write: several requests are in flight
    hub.process.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert len(acked) > 50, "the load did not get going before the kill"

    restarted = start_hub(store_uri, home, database=database)
    print(f"acknowledged writes before the kill: {len(acked)}")
    try:
        with restarted.client() as client:
            for rid, vid, body in acked:  # every acknowledged version reads back exactly as acknowledged
                got = client.get(f"/Patient/{rid}/_history/{vid}")
                assert got.status_code == 200, (rid, vid, got.status_code)
                assert got.json() == body
            for n in range(RESOURCES):
                rid = f"crash-{n}"
                current = client.get(f"/Patient/{rid}")
                if current.status_code == 404:
                    continue
                top = int(current.json()["meta"]["versionId"])
                history = client.get(f"/Patient/{rid}/_history", params={"_count": 1000}).json()
                versions = [int(e["resource"]["meta"]["versionId"]) for e in history["entry"]]
                assert versions == list(range(top, 0, -1)), rid  # contiguous, nothing beyond current
                assert client.get(f"/Patient/{rid}/_history/{top + 1}").status_code == 404
                # search sees the current version's values, and none of the superseded ones
                family = current.json()["name"][0]["family"]
                found = client.get("/Patient", params={"family:exact": family}).json()
                assert rid in [e["resource"]["id"] for e in found.get("entry", [])], (rid, "current not indexed")
                stale = sorted({str(b["name"][0]["family"]) for r, v, b in acked  # type: ignore[index]
                                if r == rid and v < top and b["name"][0]["family"] != family})  # type: ignore[index]
                for old in stale[:5]:
                    hit = client.get("/Patient", params={"family:exact": old, "_id": rid}).json()
                    assert not hit.get("entry"), (rid, "a superseded version still matches")
                # and the resource is writable at once: no orphan claim blocks the next version
                nxt = client.put(f"/Patient/{rid}", json={"resourceType": "Patient", "id": rid})
                assert nxt.status_code == 200 and nxt.json()["meta"]["versionId"] == str(top + 1)
    finally:
        stop_hub(restarted)


@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_clean_stop_stops_embedded_store(tmp_path: Path, signum: int) -> None:
    """`medunion run` on the embedded default starts FerretDB and stops it with the hub."""
    import os
    import subprocess
    import sys

    from fhir_server.embedded_store import free_port

    port, store_port = free_port(), free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MEDUNION_") and k != "MONGODB_URI"},
           "MEDUNION_HOME": str(tmp_path), "MEDUNION_HTTP_PORT": str(port), "MEDUNION_FERRETDB_PORT": str(store_port)}
    proc = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "run"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail("hub with embedded store did not start")
        assert (tmp_path / "store" / "sqlite").is_dir()
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=30)
        assert b"Admin bearer token" in out
        import socket

        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", store_port)) != 0, "FerretDB still listening after the hub stopped"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_store_outage_gives_503_and_recovers(tmp_path: Path) -> None:
    """The store goes away under a running hub: clear 503 OperationOutcomes, not hangs or 500s."""
    from fhir_server.embedded_store import EmbeddedStore, free_port

    store = EmbeddedStore(data_dir=tmp_path / "store", port=free_port())
    store.start()
    hub = start_hub(store.uri, tmp_path / "home", extra={"MEDUNION_STORE_TIMEOUT_SECONDS": "1"})
    try:
        with hub.client() as client:
            pid = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
            store.stop()
            down = client.get(f"/Patient/{pid}")
            assert down.status_code == 503, down.text
            assert down.json()["issue"][0]["code"] == "transient" and "Traceback" not in down.text
            assert down.headers["retry-after"] == "5"
            assert client.post("/Patient", json={"resourceType": "Patient"}).status_code == 503
            store.start()
            deadline = time.monotonic() + 20
            while client.get(f"/Patient/{pid}").status_code != 200:
                assert time.monotonic() < deadline, "the hub did not reconnect to the store"
                time.sleep(0.2)
    finally:
        stop_hub(hub)
        store.stop()


@pytest.mark.parametrize("survivor", ["same instance", "another instance"])
def test_kill_during_transactions_leaves_each_all_or_nothing(store_uri: str, tmp_path: Path, survivor: str) -> None:
    """The dead hub's unfinished transactions are undone by itself at restart, or by another instance once
    its journal is older than the lease."""
    home = tmp_path / "home"
    database = f"txcrash{int(time.time())}{survivor[0]}"
    lease = {"MEDUNION_WRITE_LEASE_SECONDS": "3"}
    hub = start_hub(store_uri, home, database=database, extra={"MEDUNION_INSTANCE_ID": "a", **lease})
    shared = [f"shared-{k}" for k in range(5)]
    with hub.client() as client:
        for rid in shared:
            client.put(f"/Basic/{rid}", json={"resourceType": "Basic", "id": rid, "code": {"text": "start"}})
    acked: list[str] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        with hub.client() as client:
            n = 0
            while not stop.is_set():
                marker = f"w{worker}-{n}"
                n += 1
                entries = [{"request": {"method": "POST", "url": "Basic"},
                            "resource": {"resourceType": "Basic", "code": {"text": marker}}} for _ in range(5)]
                entries += [{"request": {"method": "PUT", "url": f"Basic/{rid}"},
                             "resource": {"resourceType": "Basic", "id": rid, "code": {"text": marker}}}
                            for rid in shared]
                try:
                    r = client.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
                except httpx.TransportError:
                    return
                if r.status_code == 200:
                    acked.append(marker)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    hub.process.send_signal(signal.SIGKILL)
    hub.process.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert len(acked) >= 5, "the load did not get going before the kill"

    if survivor == "another instance":
        time.sleep(3.5)  # the dead instance's journal and claims are older than the lease now
    restarted = start_hub(store_uri, home, database=database, extra={
        "MEDUNION_INSTANCE_ID": "a" if survivor == "same instance" else "b", **lease})
    try:
        with restarted.client() as client:
            finals = {client.get(f"/Basic/{rid}").json()["code"]["text"] for rid in shared}
            assert len(finals) == 1, finals  # every shared resource holds the same transaction's value
            created: dict[str, int] = {}
            url: str | None = "/Basic/_history?_count=1000"
            while url:
                page = client.get(url.replace(restarted.base, "")).json()
                for e in page.get("entry", []):
                    if e["request"]["method"] == "POST":
                        text = e["resource"]["code"]["text"]
                        created[text] = created.get(text, 0) + 1
                url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
            assert all(count == 5 for count in created.values()), {k: v for k, v in created.items() if v != 5}
            for marker in acked:  # every acknowledged transaction is there whole
                assert created.get(marker) == 5, marker
            winner = finals.pop()
            assert winner == "start" or created.get(winner) == 5
            for rid in shared:  # and nothing is left claimed
                r = client.put(f"/Basic/{rid}", json={"resourceType": "Basic", "id": rid, "code": {"text": "after"}})
                assert r.status_code == 200
    finally:
        stop_hub(restarted)
