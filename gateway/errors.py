"""The one gRPC status -> HTTP status table, and the JSON error responses built on it.

Every error the gateway answers has the body `{"error": {code, reason, message, details}}` (the
shape of `AgentMeshError.to_json`), whether the coordinator raised it or the gateway itself did.
"""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any

import grpc
from starlette.responses import JSONResponse

from services.runtime.errors import AgentMeshError, InvalidArgument, internal_error

log = logging.getLogger(__name__)

# The mapping that google.rpc.Code documents, plus CANCELLED -> 499 (the client gave up) as nginx
# and Google's own HTTP APIs do.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class HttpError(AgentMeshError):
    """An error of the HTTP layer itself, whose status the gRPC table cannot express (413, 405)."""

    http_status: int = 400

    def __init__(
        self,
        message: str,
        *,
        http_status: int,
        code: grpc.StatusCode,
        reason: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.http_status = http_status
        self.code = code  # type: ignore[misc]
        self.headers = headers or {}


def payload_too_large(limit: int) -> HttpError:
    return HttpError(
        f"request body is larger than {limit} bytes",
        http_status=413,
        code=grpc.StatusCode.INVALID_ARGUMENT,
        reason="PAYLOAD_TOO_LARGE",
    )


def malformed_json(message: str) -> InvalidArgument:
    return InvalidArgument(message, reason="MALFORMED_JSON")


def http_status_for(code: grpc.StatusCode) -> int:
    """The HTTP status for a gRPC code; a code missing from the table is a server fault."""
    return HTTP_STATUS.get(code, 500)


def retry_after_seconds(retry_after_s: float | None) -> int:
    """`Retry-After` is whole seconds; round up so a client never comes back too early, and never 0."""
    if retry_after_s is None or not math.isfinite(retry_after_s):
        return 1
    return max(1, math.ceil(retry_after_s))


def error_headers(error: AgentMeshError) -> dict[str, str]:
    headers: dict[str, str] = dict(getattr(error, "headers", {}))
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        headers["Retry-After"] = str(retry_after_seconds(error.retry_after_s))
    if error.code == grpc.StatusCode.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = "Bearer"
    return headers


def error_status(error: AgentMeshError) -> int:
    if isinstance(error, HttpError):
        return error.http_status
    return http_status_for(error.code)


def error_body(error: AgentMeshError) -> dict[str, Any]:
    return {"error": error.to_json()}


def error_response(error: AgentMeshError) -> JSONResponse:
    return JSONResponse(error_body(error), status_code=error_status(error), headers=error_headers(error))


def unexpected_error(exc: BaseException, where: str) -> AgentMeshError:
    """Log an exception nobody expected under a fresh correlation id, which the client also gets."""
    correlation = uuid.uuid4().hex[:12]
    log.error("unhandled error in %s (correlation id %s)", where, correlation, exc_info=exc)
    return internal_error(correlation)
