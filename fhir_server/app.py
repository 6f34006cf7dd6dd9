"""Composition root: builds the ASGI app and wires storage, service, auth and entry points together."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pymongo.errors import ConnectionFailure
from starlette.applications import Starlette
from starlette.routing import Mount

from fhir_server.api.deps import TokenCache
from fhir_server.api.errors import install_error_handlers
from fhir_server.api.limits import RequestLimits
from fhir_server.api.routes import fhir_routes, root_routes
from fhir_server.auth.tokens import TokenVerifier
from fhir_server.errors import StoreUnavailable
from fhir_server.service import BundleService, ResourceService
from fhir_server.service.reindex import Reindexer
from fhir_server.settings import Settings
from fhir_server.storage import ResourceStore, connect

__all__ = ["create_app"]

log = logging.getLogger("medunion.app")


async def _housekeeping(service: ResourceService, every: float = 10.0) -> None:
    """Pick up SearchParameters written by other processes sharing the store (this one refreshes at once), and
    undo the transactions of instances that died while committing (their journals outlive the lease)."""
    rounds = 0
    while True:
        await asyncio.sleep(every)
        rounds += 1
        try:
            await service.refresh_search_parameters()
            if rounds % 6 == 0:
                undone = await service.store.recover_abandoned()
                if undone:
                    log.warning("undid %d transactions abandoned by a stopped hub instance", undone)
        except Exception as exc:  # the store may be down for a while; the next round tries again
            log.warning("housekeeping round failed: %s", type(exc).__name__)


async def _backfill_history_keys(store: ResourceStore, retry: float = 30.0) -> None:
    """Give the versions an older hub wrote their history keys, in the background (type and system history
    read the slower way until it is done); a failed attempt is tried again."""
    while True:
        try:
            complete = await store.history_keys_complete()
            if not complete:
                log.info("history keys: indexing the versions written before this hub version")
            seen = await store.backfill_history_keys()  # complete: drops the indexes the older reads needed
            if not complete:
                log.info("history keys: done (%d stored versions read)", seen)
            return
        except Exception as exc:  # the store may be down for a while
            log.warning("history keys: attempt failed (%s); trying again", type(exc).__name__)
            await asyncio.sleep(retry)


def create_app(settings: Settings, *, mongodb_uri: str | None = None) -> Any:
    """The ASGI app. ``mongodb_uri`` overrides settings (the embedded store's address)."""
    uri = mongodb_uri or settings.mongodb_uri
    if uri is None:
        raise ValueError("create_app needs a MongoDB URI (MONGODB_URI or the embedded store)")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = await connect(uri, timeout_seconds=settings.store_timeout_seconds)
        store = ResourceStore(client[settings.mongodb_database], lease_seconds=settings.write_lease_seconds,
                              owner=settings.instance_id)
        await store.ensure_indexes()
        undone, released = await store.recover()
        if undone or released:
            log.warning("recovered from an unclean stop: %d unfinished transactions undone, %d locks released",
                        undone, released)
        app.state.settings = settings
        app.state.store = store
        app.state.service = ResourceService(store=store, settings=settings)
        app.state.bundles = BundleService(resources=app.state.service, settings=settings)
        app.state.reindexer = Reindexer(resources=app.state.service, settings=settings)
        await app.state.service.refresh_search_parameters()
        await app.state.reindexer.resume()  # this instance's jobs that a stop interrupted
        await app.state.reindexer.upgrade()  # a store indexed by an older hub: re-indexed in the background
        refresher = asyncio.create_task(_housekeeping(app.state.service))
        backfill = asyncio.create_task(_backfill_history_keys(store))
        app.state.tokens = TokenCache(TokenVerifier(settings))
        # Everything loaded so far (models, routes, settings) lives as long as the process: keep it out of
        # the cyclic collector's scans, which otherwise stall busy event loops for tens of milliseconds.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            refresher.cancel()
            backfill.cancel()
            await app.state.reindexer.stop()
            await app.state.service.engine.stop()
            await client.close()

    # Starlette directly, not FastAPI: its per-request dependency and middleware machinery cost 30 % of read
    # throughput (docs/benchmarks.md), and the FHIR API does its own negotiation, parsing and responses.
    app = Starlette(routes=[Mount("/fhir", routes=fhir_routes()), *root_routes()], lifespan=lifespan)
    install_error_handlers(app, translate={ConnectionFailure: StoreUnavailable(
        "The document store does not answer; nothing was changed. Retry in a moment.",
        headers={"Retry-After": "5"})})
    return RequestLimits(app, timeout=settings.request_timeout_seconds, max_in_flight=settings.max_connections)
