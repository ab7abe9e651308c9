"""One error hierarchy for the whole mesh.

Each class carries a gRPC status code, a stable UPPER_SNAKE `reason` and whether retrying may help.
`to_rpc_status` turns an error into a `google.rpc.Status` (ErrorInfo, RetryInfo, BadRequest details);
`from_rpc_error` rebuilds the same class on the client side from the trailing metadata. Anything
unknown becomes `RemoteError` keeping its code and message.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "agentmesh"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class AgentMeshError(Exception):
    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    default_reason: ClassVar[str] = "INTERNAL"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        details: dict[str, str] | None = None,
        retry_after_s: float | None = None,
        field_violations: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.details = details or {}
        self.retry_after_s = retry_after_s
        self.field_violations = field_violations or []

    def to_rpc_status(self) -> status_pb2.Status:
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.details)
        status.details.add().Pack(info)
        if self.retry_after_s is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after_s * 1e9))
            status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        if self.field_violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in self.field_violations
                ]
            )
            status.details.add().Pack(bad)
        return status

    def to_json(self) -> dict[str, Any]:
        """The gateway's error body: {code, reason, message, details}."""
        details: dict[str, Any] = dict(self.details)
        if self.retry_after_s is not None:
            details["retry_after_s"] = self.retry_after_s
        if self.field_violations:
            details["field_violations"] = [{"field": f, "description": d} for f, d in self.field_violations]
        return {"code": self.code.name, "reason": self.reason, "message": self.message, "details": details}

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class InvalidArgument(AgentMeshError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class NotFound(AgentMeshError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(AgentMeshError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(AgentMeshError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(AgentMeshError):
    """Backpressure: the caller may retry after `retry_after_s`."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"
    retryable = True


class Unauthenticated(AgentMeshError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(AgentMeshError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unavailable(AgentMeshError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"
    retryable = True


class DeadlineExceeded(AgentMeshError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"
    retryable = True


class Cancelled(AgentMeshError):
    code = grpc.StatusCode.CANCELLED
    default_reason = "CANCELLED"


class Unimplemented(AgentMeshError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class Internal(AgentMeshError):
    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


class RemoteError(AgentMeshError):
    """An error from another process that no local class matches; keeps its code."""

    def __init__(self, code: grpc.StatusCode, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.code = code  # type: ignore[misc]


_BY_CODE: dict[grpc.StatusCode, type[AgentMeshError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unauthenticated,
        PermissionDenied,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        Unimplemented,
        Internal,
    )
}


def _status_from_metadata(metadata: Any) -> status_pb2.Status | None:
    for key, value in metadata or ():
        if key == STATUS_DETAILS_KEY:
            status = status_pb2.Status()
            status.ParseFromString(value)
            return status
    return None


def from_rpc_error(exc: grpc.RpcError) -> AgentMeshError:
    """Rebuild the error a server raised, from a client-side RpcError."""
    code = exc.code()  # type: ignore[attr-defined]
    message = exc.details() or code.name  # type: ignore[attr-defined]
    kwargs: dict[str, Any] = {}
    status = _status_from_metadata(exc.trailing_metadata())  # type: ignore[attr-defined]
    if status is not None:
        for any_detail in status.details:
            if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                any_detail.Unpack(info)
                kwargs["reason"] = info.reason
                kwargs["details"] = dict(info.metadata)
            elif any_detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                any_detail.Unpack(retry)
                kwargs["retry_after_s"] = retry.retry_delay.ToNanoseconds() / 1e9
            elif any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                any_detail.Unpack(bad)
                kwargs["field_violations"] = [(v.field, v.description) for v in bad.field_violations]
    cls = _BY_CODE.get(code)
    if cls is None:
        return RemoteError(code, message, **kwargs)
    return cls(message, **kwargs)


def trailing_metadata_for(error: AgentMeshError) -> tuple[tuple[str, bytes], ...]:
    return ((STATUS_DETAILS_KEY, error.to_rpc_status().SerializeToString()),)


def internal_error(correlation_id: str) -> Internal:
    return Internal(
        f"internal error (correlation id {correlation_id}; see the service log)",
        details={"correlation_id": correlation_id},
    )


def json_details(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


# The planner holds no live state for an SDK agent's task: the coordinator calls Decide again with
# the task's recorded decisions (DecideRequest.history).
HISTORY_REQUIRED = "HISTORY_REQUIRED"
# An SDK agent's code no longer matches its task's journal: the coordinator holds the task for an
# operator (AgentService.ResolveTask) instead of ending it.
NONDETERMINISM = "NONDETERMINISM"
