"""The hub's one exception tree. Entry points translate it at their edge (HTTP status + OperationOutcome,
HL7 NAK, DIMSE status); nothing below the edge knows about transports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "Gone",
    "HubError",
    "Issue",
    "MethodNotAllowed",
    "NotAcceptable",
    "NotFound",
    "PayloadTooLarge",
    "PreconditionFailed",
    "StoreUnavailable",
    "Unauthorized",
    "UnprocessableEntity",
    "UnsupportedMediaType",
    "operation_outcome",
]

Severity = Literal["fatal", "error", "warning", "information"]


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue: what was wrong (diagnostics) and where (FHIRPath ``expression``)."""

    code: str  # http://hl7.org/fhir/issue-type
    diagnostics: str
    expression: tuple[str, ...] = ()
    severity: Severity = "error"

    def to_fhir(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


class HubError(Exception):
    """Base of every error a caller can meet. ``status`` is the HTTP status the REST edge uses."""

    status: int = 500
    code: str = "exception"

    def __init__(
        self, message: str, *, issues: list[Issue] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.issues = issues or [Issue(code=self.code, diagnostics=message)]
        self.headers = headers or {}


class BadRequest(HubError):
    """Malformed request or resource (HTTP 400)."""

    status, code = 400, "invalid"


class Unauthorized(HubError):
    """No or invalid credentials (HTTP 401)."""

    status, code = 401, "login"


class Forbidden(HubError):
    """Authenticated but not allowed (HTTP 403)."""

    status, code = 403, "forbidden"


class NotFound(HubError):
    """Unknown resource, version, type or route (HTTP 404)."""

    status, code = 404, "not-found"


class MethodNotAllowed(HubError):
    """The interaction does not exist on this route (HTTP 405)."""

    status, code = 405, "not-supported"


class NotAcceptable(HubError):
    """No representation the client accepts (HTTP 406)."""

    status, code = 406, "not-supported"


class Conflict(HubError):
    """A concurrent write won, or the request contradicts stored state (HTTP 409)."""

    status, code = 409, "conflict"


class Gone(HubError):
    """The resource was deleted (HTTP 410; FHIR R4 http.html#read: a deleted resource reads as 410)."""

    status, code = 410, "deleted"


class PreconditionFailed(HubError):
    """If-Match did not hold, or a conditional operation matched several resources (HTTP 412)."""

    status, code = 412, "conflict"


class PayloadTooLarge(HubError):
    """Request body over the configured cap (HTTP 413)."""

    status, code = 413, "too-costly"


class UnsupportedMediaType(HubError):
    """Request body in a format the hub does not read (HTTP 415)."""

    status, code = 415, "not-supported"


class StoreUnavailable(HubError):
    """The document store does not answer (HTTP 503); nothing was written."""

    status, code = 503, "transient"


class UnprocessableEntity(HubError):
    """Well-formed but violates a business rule (HTTP 422)."""

    status, code = 422, "business-rule"
