"""The ``medunion`` console command: ``run`` (the hub in the foreground) and ``token`` (development tokens).

argparse rather than a CLI framework: two sub-commands with a handful of options need nothing more.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys

from pydantic import ValidationError

from fhir_server.settings import Settings, SettingsError

__all__ = ["main"]

ADMIN_SCOPE = "system/*.cruds"


def _settings() -> Settings:
    try:
        return Settings()
    except (ValidationError, SettingsError) as exc:
        print(f"medunion: configuration error:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")


def _run(args: argparse.Namespace) -> int:
    from fhir_server.auth.tokens import ensure_dev_keys, mint_token
    from fhir_server.embedded_store import EmbeddedStore, EmbeddedStoreError

    settings = _settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    _configure_logging()
    store = None
    uri = settings.mongodb_uri
    if uri is None:
        try:
            store = EmbeddedStore(data_dir=settings.home / "store", port=settings.ferretdb_port,
                                  binary=settings.ferretdb_bin)
            store.start()
        except EmbeddedStoreError as exc:
            print(f"medunion: {exc}", file=sys.stderr)
            return 3
        uri = store.uri
    try:
        ensure_dev_keys(settings)
        if settings.env == "development":
            token = mint_token(settings, subject="admin", scope=ADMIN_SCOPE, lifetime_seconds=12 * 3600)
            store_text = "embedded FerretDB (SQLite) under " + str(settings.home / "store") if store else "MONGODB_URI"
            base = settings.fhir_base
            print(f"\nMedUnion Hub: FHIR R4 at {base} (store: {store_text})\n"
                  f"Admin bearer token (development, 12 h, scope {ADMIN_SCOPE}):\n\n{token}\n\n"
                  f"Try (create a patient, then read it by the id in the Location header):\n"
                  f"  export TOKEN={token}\n"
                  f"  curl -i -X POST -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/fhir+json' "
                  f"-d '{{\"resourceType\":\"Patient\",\"name\":[{{\"family\":\"王\",\"given\":[\"小东\"]}}]}}' "
                  f"{base}/Patient\n"
                  f"  curl -H \"Authorization: Bearer $TOKEN\" {base}/Patient/<id>\n"
                  f"  curl {base}/metadata\n", flush=True)
        if settings.workers == 1:
            # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; with the default handlers that would
            # kill this process before the `finally` below stops the embedded store. Ours just let it return.
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: None)
            _serve(settings, uri)
            return 0
        return _supervise(settings, uri)
    finally:
        if store is not None:
            store.stop()


def _listen(settings: Settings) -> socket.socket:
    """The API socket. SO_REUSEPORT lets each worker process bind its own; the kernel spreads connections."""
    sock = socket.socket(socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.http_host, settings.http_port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _serve(settings: Settings, uri: str) -> None:
    """One hub process in the foreground."""
    import uvicorn

    from fhir_server.api.http_protocol import FhirHttpToolsProtocol
    from fhir_server.app import create_app

    app = create_app(settings, mongodb_uri=uri)
    # the concurrency limit is RequestLimits' (503 with an OperationOutcome), not uvicorn's plain-text one; so is a
    # request that is not HTTP (http_protocol.py)
    config = uvicorn.Config(app, access_log=False, log_level="info", timeout_keep_alive=15, http=FhirHttpToolsProtocol,
                            h11_max_incomplete_event_size=64 * 1024, server_header=False, proxy_headers=False)
    uvicorn.Server(config).run(sockets=[_listen(settings)])


def _supervise(settings: Settings, uri: str) -> int:
    """Run ``settings.workers`` hub processes on one port; stop them all when one fails or we are told to stop.

    Each worker gets its own instance id (``<instance_id>-<n>``), stable across restarts of the hub, so each
    settles only its own unfinished writes.
    """
    import subprocess
    import time

    children: list[subprocess.Popen[bytes]] = []
    for n in range(settings.workers):
        env = {**os.environ, "MONGODB_URI": uri, "MEDUNION_WORKERS": "1",
               "MEDUNION_INSTANCE_ID": f"{settings.instance_id}-{n}"}
        children.append(subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "worker"], env=env))
    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stopping and all(c.poll() is None for c in children):
            time.sleep(0.2)
    finally:
        for c in children:
            if c.poll() is None:
                c.terminate()
        for c in children:
            try:
                c.wait(timeout=15)
            except subprocess.TimeoutExpired:
                c.kill()
    return 0 if stopping else 1


def _worker(args: argparse.Namespace) -> int:
    settings = _settings()
    _configure_logging()
    from fhir_server.embedded_store import die_with_parent

    die_with_parent()
    if settings.mongodb_uri is None:
        print("medunion worker: MONGODB_URI is required", file=sys.stderr)
        return 2
    _serve(settings, settings.mongodb_uri)
    return 0


def _token(args: argparse.Namespace) -> int:
    from fhir_server.auth.tokens import mint_token

    settings = _settings()
    print(mint_token(settings, subject=args.sub, scope=args.scope, patient=args.patient,
                     lifetime_seconds=args.lifetime))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medunion", description="MedUnion Hub")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the hub in the foreground (starts the embedded store unless MONGODB_URI)")
    sub.add_parser("worker", help=argparse.SUPPRESS)
    token = sub.add_parser("token", help="print a bearer token the hub with the same MEDUNION_HOME accepts")
    token.add_argument("--sub", required=True, help="subject (user or system name)")
    token.add_argument("--scope", default=ADMIN_SCOPE, help="SMART scopes, space-separated")
    token.add_argument("--patient", default=None, help="launch patient id for patient/ scopes")
    token.add_argument("--lifetime", type=int, default=3600, help="seconds until the token expires")
    args = parser.parse_args(argv)
    return {"run": _run, "token": _token, "worker": _worker}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
