"""Pure-ASGI middleware: a time limit per request, an access log without patient data, and the end of unexpected
errors (answered 500, logged without their message)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_server.api.errors import INTERNAL_ERROR, log_unexpected
from fhir_server.errors import Issue, operation_outcome

__all__ = ["RequestLimits"]

log = logging.getLogger("medunion.access")

_TIMEOUT_BODY = orjson.dumps(operation_outcome([
    Issue(code="timeout", diagnostics="The request took longer than the hub's limit")]))
_ERROR_BODY = orjson.dumps(operation_outcome([INTERNAL_ERROR]))
_BUSY_BODY = orjson.dumps(operation_outcome([
    Issue(code="transient", diagnostics="The hub is at its limit of concurrent requests; retry after a moment")]))


class RequestLimits:
    """Refuses requests over ``max_in_flight`` and ends those that run past ``timeout`` seconds (503 with an
    OperationOutcome), and logs method, route template, status and duration: never the URL (ids,
    identifiers and search values are patient data)."""

    def __init__(self, app: ASGIApp, *, timeout: float, max_in_flight: int) -> None:
        self.app = app
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            await _send_outcome(send, 503, _BUSY_BODY)
            return
        self.in_flight += 1
        started = time.perf_counter()
        state: dict[str, Any] = {"status": 0}

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            await send(message)

        try:
            async with asyncio.timeout(self.timeout):
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if state["status"] == 0:
                state["status"] = 503
                await _send_outcome(send, 503, _TIMEOUT_BODY)
        except Exception as exc:
            # Starlette's ServerErrorMiddleware has had the hub's handler log the frames (never the message) and
            # answer 500, then raises the exception again for the server to log: uvicorn would log it with its
            # message, which can carry patient data, and close the keep-alive connection. It ends here.
            if state["status"] == 0:  # nothing was answered (not expected): answer and log as the handler does
                log_unexpected(exc, f"{scope['method']} (no answer)")
                state["status"] = 500
                await _send_outcome(send, 500, _ERROR_BODY)
        finally:
            self.in_flight -= 1
            if log.isEnabledFor(logging.INFO):
                route = scope.get("route")
                template = getattr(route, "path", "?") if route is not None else "(no route)"
                log.info("%s %s %s %.1fms", scope["method"], template, state["status"],
                         (time.perf_counter() - started) * 1000)


async def _send_outcome(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/fhir+json; charset=utf-8"), (b"retry-after", b"5")]})
    await send({"type": "http.response.body", "body": body})
