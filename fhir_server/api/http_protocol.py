"""The HTTP/1.1 listener's answer to bytes that are not an HTTP request: an OperationOutcome, not uvicorn's plain
text "Invalid HTTP request received.".

The usual cause from a hospital's side is a URL with characters that are not percent-encoded: `curl
".../Patient?family=王"` sends the UTF-8 bytes of 王 raw, which HTTP does not allow in a request line (RFC 9112,
RFC 3986), and the parser refuses the request before the hub sees it. The outcome says how to send such a value.
It never repeats the request (search values are patient data).
"""

from __future__ import annotations

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from fhir_server.errors import Issue, operation_outcome

__all__ = ["FhirHttpToolsProtocol"]

_INVALID_REQUEST_BODY = orjson.dumps(operation_outcome([Issue(
    code="structure",
    diagnostics="The request is not valid HTTP/1.1, so the hub could not read it. The usual cause is a URL with "
                "characters that are not percent-encoded: send non-ASCII search values as percent-encoded UTF-8 "
                "(RFC 3986), e.g. family=%E7%8E%8B for family=王; with curl: curl -G --data-urlencode 'family=王' "
                "<base>/Patient")]))


class FhirHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose 400 for a request it cannot parse is a FHIR OperationOutcome."""

    def send_400_response(self, msg: str) -> None:
        head = [STATUS_LINE[400]]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [b"content-type: application/fhir+json; charset=utf-8\r\n",
                 b"content-length: " + str(len(_INVALID_REQUEST_BODY)).encode("ascii") + b"\r\n",
                 b"connection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + _INVALID_REQUEST_BODY)
        self.transport.close()
