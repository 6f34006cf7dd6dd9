"""Test session: a real FerretDB on a free loopback port and the real hub (`medunion run`) in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient, monitoring

from fhir_server.auth.tokens import mint_token
from fhir_server.embedded_store import EmbeddedStore, free_port
from fhir_server.errors import HubError
from fhir_server.model.types import SUPPORTED_TYPES
from fhir_server.model.validation import validate_resource
from fhir_server.settings import Settings
from fhir_server.storage import ResourceStore

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / ".cache" / "fhir-r4-examples" / "package"
ADMIN = "system/*.cruds"
BODY_CAP = 15_000_000  # under the 16 MiB BSON document limit; the official examples reach 35 MB


def example_files() -> list[Path]:
    """Every resource file of the official R4 examples package."""
    return sorted(p for p in EXAMPLES.glob("*.json") if p.name not in ("package.json", ".index.json"))


@cache
def valid_examples() -> tuple[dict[str, Any], ...]:
    """The official examples the hub would store (supported type, valid): what it can ever index.

    Validating all of them takes ~20 s, so the session does it once for every test that needs them.
    """
    out = []
    for path in example_files():
        resource = json.loads(path.read_text(encoding="utf-8"))
        if resource.get("resourceType") not in SUPPORTED_TYPES:
            continue
        try:
            validate_resource(resource)
        except HubError:
            continue
        out.append(resource)
    return tuple(out)


@dataclass
class Hub:
    """A running hub process and what a client needs to talk to it."""

    base: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return settings_from(self.env)

    def token(self, scope: str = ADMIN, *, sub: str = "tester", **kw: object) -> str:
        key = f"{scope}|{sub}|{sorted(kw.items())}"
        if key not in self.tokens:
            self.tokens[key] = mint_token(self.settings, subject=sub, scope=scope, **kw)  # type: ignore[arg-type]
        return self.tokens[key]

    def client(self, scope: str = ADMIN, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=60,
                            headers={"Authorization": f"Bearer {self.token(scope, **kw)}",
                                     "Content-Type": "application/fhir+json"})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def settings_from(env: dict[str, str]) -> Settings:
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


@asynccontextmanager
async def fresh_store(store_uri: str, *, owner: str, listeners: tuple[monitoring.CommandListener, ...] = ()
                      ) -> AsyncIterator[ResourceStore]:
    """A ResourceStore on a database of its own in the session's FerretDB, its indexes made; closed after."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(store_uri, event_listeners=list(listeners))
    store = ResourceStore(client[f"t{uuid.uuid4().hex[:12]}"], owner=owner, lease_seconds=60)
    await store.ensure_indexes()
    try:
        yield store
    finally:
        await client.close()


_FOLLOW_UPS = {"getMore": "collection", "killCursors": "killCursors"}  # command: its field naming the collection


class CommandCounter(monitoring.CommandListener):
    """Counts the ``command`` commands (``find`` unless told) a PyMongo client sends to the given collections and
    keeps their filters (pass it as an event listener), and counts the ``getMore`` and ``killCursors`` commands
    that follow finds (``follow_ups``: a read in one reply has none)."""

    def __init__(self, *collections: str, command: str = "find") -> None:
        self.collections = collections
        self.command = command
        self.count = 0
        self.follow_ups = 0
        self.filters: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name = event.command_name
        if name == self.command and event.command.get(name) in self.collections:
            self.count += 1
            self.filters.append(event.command.get("filter", {}))
        elif name in _FOLLOW_UPS and event.command.get(_FOLLOW_UPS[name]) in self.collections:
            self.follow_ups += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture(scope="session")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = EmbeddedStore(data_dir=tmp_path_factory.mktemp("ferretdb"), port=free_port())
    store.start()
    yield store.uri
    store.stop()


def start_hub(store_uri: str, home: Path, *, database: str = "medunion", extra: dict[str, str] | None = None) -> Hub:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MEDUNION_")},
        "MONGODB_URI": store_uri, "MEDUNION_HOME": str(home), "MEDUNION_HTTP_PORT": str(port),
        "MEDUNION_MONGODB_DATABASE": database, **(extra or {}),
    }
    log_path = home / "hub.log"
    home.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "run"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/fhir"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"hub exited at start:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{base}/metadata", timeout=2).status_code == 200:
                return Hub(base=base, env=env, process=process, log_path=log_path)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"hub did not answer within 60 s:\n{log_path.read_text()}")


def stop_hub(hub: Hub) -> None:
    if hub.process.poll() is None:
        hub.process.terminate()
        try:
            hub.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            hub.process.kill()


@pytest.fixture(scope="session")
def hub(store_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    running = start_hub(store_uri, tmp_path_factory.mktemp("hub"), extra={"MEDUNION_MAX_BODY_BYTES": str(BODY_CAP)})
    yield running
    stop_hub(running)


@pytest.fixture
def api(hub: Hub) -> Iterator[httpx.Client]:
    with hub.client() as client:
        yield client


def pages_both_ways(api: httpx.Client, hub: Hub, url: str) -> list[list[str]]:
    """The ids of every page of a search, following its ``next`` links from ``url``; the ``previous`` links from
    the last page must give back the same pages."""
    def link(page: dict[str, Any], relation: str) -> str | None:
        return next((x["url"].replace(hub.base, "") for x in page["link"] if x["relation"] == relation), None)

    pages: list[list[str]] = []
    page: dict[str, Any] = {}
    at: str | None = url
    while at:
        answer = api.get(at)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        pages.append([e["resource"]["id"] for e in page.get("entry", [])])
        at = link(page, "next")
        assert len(pages) <= 1000, f"{url}: next links past 1,000 pages (a cursor that does not advance?)"
    back = [pages[-1]]
    at = link(page, "previous")
    while at:
        page = api.get(at).json()
        back.append([e["resource"]["id"] for e in page.get("entry", [])])
        at = link(page, "previous")
    assert back[::-1] == pages, url
    return pages


@cache
def _readings() -> dict[str, str]:
    """Chinese character -> the reading it sorts by (data/pinyin.json, derived from pypinyin's table)."""
    text = resources.files("fhir_server.search").joinpath("data/pinyin.json").read_text("utf-8")
    return {c: reading for reading, chars in json.loads(text)["readings"].items() for c in chars}


def collated(text: str) -> tuple[tuple[str, ...], ...]:
    """The evaluator's order of strings (FHIR R4 leaves it to the server; the hub's, search/collation.py): character
    by character, a Chinese character as (U+FDD0, its reading, itself): after every character below U+FDD0, by
    reading, then by code point; any other character as itself; a text before its extensions."""
    readings = _readings()
    return tuple(("\ufdd0", readings[c], c) if c in readings else (c,) for c in text)
