"""Translation of the exception tree into HTTP status + OperationOutcome, for every route including unknown ones."""

from __future__ import annotations

import logging
import traceback

from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.formats import Rendering, fhir_response, rendering_of
from fhir_server.errors import HubError, Issue, NotAcceptable, operation_outcome

__all__ = ["INTERNAL_ERROR", "install_error_handlers", "log_unexpected"]

log = logging.getLogger("medunion.api")

INTERNAL_ERROR = Issue(code="exception", diagnostics="Internal server error; the hub's log has the details")


def log_unexpected(exc: BaseException, where: str) -> None:
    """Log an unexpected exception by type and stack frames: no message and no locals, they can carry patient
    data (DESIGN: patient data never goes into logs)."""
    log.error("unhandled %s on %s\n%s", type(exc).__name__, where, "".join(traceback.format_tb(exc.__traceback__)))


_HTTP_CODES = {404: "not-found", 405: "not-supported", 413: "too-costly", 401: "login", 403: "forbidden"}


def _rendering(request: Request) -> Rendering:
    try:
        r = rendering_of(request)
        return Rendering(r.fmt, r.pretty, "false", None)
    except (HubError, ValueError):
        return Rendering("json", False, "false", None)


def _outcome(request: Request, status: int, issues: list[Issue], headers: dict[str, str] | None = None) -> Response:
    return fhir_response(operation_outcome(issues), _rendering(request), status=status, headers=headers, shape=False)


def install_error_handlers(app: Starlette, *, translate: dict[type[Exception], HubError] | None = None) -> None:
    """Register the handlers. ``translate`` maps exceptions of lower layers (the store driver) onto HubErrors;
    the composition root supplies it, so this module knows no driver."""
    for kind, hub_error in (translate or {}).items():
        async def _translated(request: Request, exc: Exception, hub_error: HubError = hub_error) -> Response:
            log.warning("%s: %s", type(exc).__name__, hub_error.message)
            return _outcome(request, hub_error.status, hub_error.issues, hub_error.headers)

        app.add_exception_handler(kind, _translated)

    async def _hub_error(request: Request, exc: HubError) -> Response:
        if isinstance(exc, NotAcceptable):  # cannot honour Accept: answer in JSON
            return fhir_response(operation_outcome(exc.issues), Rendering("json", False, "false", None),
                                 status=exc.status, headers=exc.headers, shape=False)
        return _outcome(request, exc.status, exc.issues, exc.headers)

    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            text = f"No route for {request.method} {request.url.path}"
        elif exc.status_code == 405:
            text = f"{request.method} is not supported on {request.url.path}"
        else:
            text = str(exc.detail)
        return _outcome(request, exc.status_code, [Issue(code=_HTTP_CODES.get(exc.status_code, "processing"),
                                                         diagnostics=text)])

    async def _unexpected(request: Request, exc: Exception) -> Response:
        route = request.scope.get("route")
        log_unexpected(exc, f"{request.method} {getattr(route, 'path', '?') if route is not None else '(no route)'}")
        return _outcome(request, 500, [INTERNAL_ERROR])

    app.add_exception_handler(HubError, _hub_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
