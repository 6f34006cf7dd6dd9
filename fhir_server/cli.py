"""The ``medunion`` console command: ``run`` (the hub in the foreground) and ``token`` (development tokens).

argparse rather than a CLI framework: two sub-commands with a handful of options need nothing more.
"""

from __future__ import annotations

import argparse
import logging
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


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    from fhir_server.app import create_app
    from fhir_server.auth.tokens import ensure_dev_keys, mint_token
    from fhir_server.embedded_store import EmbeddedStore, EmbeddedStoreError

    settings = _settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
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
        if settings.env == "development":
            ensure_dev_keys(settings)
            token = mint_token(settings, subject="admin", scope=ADMIN_SCOPE, lifetime_seconds=12 * 3600)
            store_text = "embedded FerretDB (SQLite) under " + str(settings.home / "store") if store else "MONGODB_URI"
            print(f"\nMedUnion Hub: FHIR R4 at {settings.fhir_base} (store: {store_text})\n"
                  f"Admin bearer token (development, 12 h, scope {ADMIN_SCOPE}):\n\n{token}\n\n"
                  f"Try:\n  curl -H 'Authorization: Bearer {token}' {settings.fhir_base}/Patient/example\n"
                  f"  curl {settings.fhir_base}/metadata\n", flush=True)
        app = create_app(settings, mongodb_uri=uri)
        uvicorn.run(app, host=settings.http_host, port=settings.http_port, access_log=False, log_level="info",
                    limit_concurrency=settings.max_connections, timeout_keep_alive=15,
                    h11_max_incomplete_event_size=64 * 1024, server_header=False)
    finally:
        if store is not None:
            store.stop()
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
    token = sub.add_parser("token", help="print a bearer token the hub with the same MEDUNION_HOME accepts")
    token.add_argument("--sub", required=True, help="subject (user or system name)")
    token.add_argument("--scope", default=ADMIN_SCOPE, help="SMART scopes, space-separated")
    token.add_argument("--patient", default=None, help="launch patient id for patient/ scopes")
    token.add_argument("--lifetime", type=int, default=3600, help="seconds until the token expires")
    args = parser.parse_args(argv)
    return {"run": _run, "token": _token}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
