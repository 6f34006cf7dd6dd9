"""Limits of the HTTP listener: time per request and requests in flight, answered with OperationOutcomes."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest

from tests.conftest import Hub, start_hub, stop_hub


@pytest.fixture(scope="module")
def tight_hub(store_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    hub = start_hub(store_uri, tmp_path_factory.mktemp("tight"), extra={
        "MEDUNION_REQUEST_TIMEOUT_SECONDS": "3", "MEDUNION_MAX_CONNECTIONS": "2"})
    yield hub
    stop_hub(hub)


def _slow_body(seconds: float) -> Iterator[bytes]:
    yield b'{"resourceType": "Basic", "code": {"text": "'
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.1)
        yield b"x"
    yield b'"}}'


def test_slow_upload_is_cut_off_with_503(tight_hub: Hub) -> None:
    with tight_hub.client() as client:
        r = client.post("/Basic", content=_slow_body(6))
        assert r.status_code == 503 and r.json()["issue"][0]["code"] == "timeout"
        assert client.post("/Basic", json={"resourceType": "Basic", "code": {"text": "fast"}}).status_code == 201


def test_requests_over_the_in_flight_limit_get_503(tight_hub: Hub, tmp_path: Path) -> None:
    results: list[int] = []

    def slow() -> None:
        with tight_hub.client() as client:
            results.append(client.post("/Basic", content=_slow_body(2.0)).status_code)

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # both slow uploads are in flight now (each lasts 2 s, under the 3 s limit)
    with tight_hub.client() as client:
        busy = client.get("/Basic/whatever")
    for t in threads:
        t.join()
    assert busy.status_code == 503 and busy.json()["issue"][0]["code"] == "transient"
    assert busy.headers["retry-after"] == "5"
    assert sorted(results) == [201, 201]
    with httpx.Client() as plain:  # and the limit is released afterwards
        assert plain.get(f"{tight_hub.base}/metadata").status_code == 200


def test_an_unexpected_error_is_a_500_logged_without_its_message(caplog: pytest.LogCaptureFixture) -> None:
    """The hub's handler answers 500 and logs the frames only; the exception must not reach the server, which
    would log its message (patient data can be in it) and close the keep-alive connection."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    from fhir_server.api.errors import install_error_handlers
    from fhir_server.api.limits import RequestLimits
    from tests.conftest import free_port

    async def broken(request: Request) -> None:
        raise ValueError(f"{request.query_params['name']} {request.query_params['mrn']}")  # data in a message

    app = Starlette(routes=[Route("/fhir/Broken", broken)])
    install_error_handlers(app)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(RequestLimits(app, timeout=5, max_in_flight=4), host="127.0.0.1",
                                           port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with caplog.at_level("INFO"), httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(2):  # the second on the same keep-alive connection
                r = client.get("/fhir/Broken", params={"name": "王小东", "mrn": "MRN00000042"})
                assert r.status_code == 500 and r.json()["issue"][0]["code"] == "exception"
                assert r.headers.get("connection") != "close"
        logged = "\n".join(f"{rec.getMessage()} {rec.exc_text or ''} {rec.exc_info or ''}" for rec in caplog.records
                           if not rec.name.startswith(("httpx", "httpcore")))  # the client's own log has the URL
        assert "unhandled ValueError" in logged  # the frames, by the hub's handler
        assert "王小东" not in logged and "MRN00000042" not in logged
        assert "Exception in ASGI application" not in logged
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_request_line_with_raw_utf8_gets_an_outcome_that_says_to_percent_encode(hub: Hub, api: httpx.Client) -> None:
    """``curl ".../Patient?family=王"`` sends the UTF-8 bytes raw, which HTTP refuses before the hub sees the request:
    the answer is a 400 OperationOutcome that says how to send the value (not uvicorn's plain text), it does not
    repeat the value, and neither does the log. Percent-encoded, the same search is answered."""
    created = api.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "穆"}]})
    assert created.status_code == 201
    url = urlsplit(hub.base)
    request = (f"GET {url.path}/Patient?family=穆 HTTP/1.1\r\nHost: {url.netloc}\r\n"
               f"Authorization: {api.headers['Authorization']}\r\n\r\n").encode()
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/fhir+json" in head.lower()
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "structure"
    assert "percent-encoded" in outcome["issue"][0]["diagnostics"] and "穆" not in body.decode()
    assert "穆" not in hub.log_path.read_text(encoding="utf-8", errors="replace")
    found = api.get(f"/Patient?family={quote('穆')}").json()
    assert [e["resource"]["id"] for e in found["entry"]] == [created.json()["id"]]
