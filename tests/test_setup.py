"""The set-up scripts and the console command, as a fresh machine meets them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import ROOT, Hub


def test_install_ferretdb_without_go_says_what_to_do(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "install-ferretdb.sh", checkout / "scripts")
    path = ":".join(p for p in os.environ["PATH"].split(":") if not (Path(p) / "go").exists())
    r = subprocess.run(["bash", str(checkout / "scripts" / "install-ferretdb.sh")],
                       env={"PATH": path, "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=30)
    assert r.returncode == 3
    assert "Go" in r.stderr and "MONGODB_URI" in r.stderr


def test_run_without_store_binary_stops_at_once_with_a_message(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "MEDUNION_HOME": str(tmp_path / "home"),
           "MEDUNION_FERRETDB_BIN": str(tmp_path / "missing-ferretdb")}
    r = subprocess.run([sys.executable, "-m", "fhir_server.cli", "run"], env=env, capture_output=True, text=True,
                       timeout=30, cwd=tmp_path)
    assert r.returncode == 3
    assert "MEDUNION_FERRETDB_BIN" in r.stderr and "MONGODB_URI" in r.stderr


def test_token_command_mints_an_accepted_token(hub: Hub) -> None:
    r = subprocess.run([sys.executable, "-m", "fhir_server.cli", "token", "--sub", "nurse-li",
                        "--scope", "user/Patient.rs"], env=hub.env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    ok = httpx.get(f"{hub.base}/Patient/nobody", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 404  # authenticated and allowed; the patient just does not exist
    denied = httpx.get(f"{hub.base}/Observation/x", headers={"Authorization": f"Bearer {token}"})
    assert denied.status_code == 403


def test_production_refuses_development_secrets(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "MEDUNION_ENV": "production", "MEDUNION_JWT_HS256_SECRET": "x" * 40,
           "MEDUNION_HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "fhir_server.cli", "run"], env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and "HS256" in r.stderr


def test_worker_processes_share_the_port_and_stop_together(store_uri: str, tmp_path: Path) -> None:
    """MEDUNION_WORKERS=2: two hub processes behind one port, each its own instance id, stopped together."""
    import signal
    import time

    from tests.conftest import start_hub

    hub = start_hub(store_uri, tmp_path / "home", database="workers", extra={"MEDUNION_WORKERS": "2"})
    try:
        children = Path(f"/proc/{hub.process.pid}/task/{hub.process.pid}/children").read_text().split()
        assert len(children) == 2
        envs = [Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") for pid in children]
        ids = {e.split(b"=", 1)[1] for env in envs for e in env if e.startswith(b"MEDUNION_INSTANCE_ID=")}
        assert ids == {b"hub-0", b"hub-1"}
        with hub.client() as client:
            for _ in range(20):  # new connections are spread over both processes; all work
                with httpx.Client(base_url=hub.base, headers=client.headers) as fresh:
                    created = fresh.post("/Basic", json={"resourceType": "Basic", "code": {"text": "w"}})
                    assert created.status_code == 201
    finally:
        hub.process.send_signal(signal.SIGTERM)
        hub.process.wait(timeout=20)
    time.sleep(0.5)
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)
