"""The one server interceptor every service runs: errors, deadlines and per-method metrics.

- An `AgentMeshError` raised by a handler becomes its gRPC status with `google.rpc.Status` details.
- Any other exception becomes INTERNAL with a correlation id that is also in the log.
- A request that is not valid protobuf (a string field that is not UTF-8, truncated bytes) is
  INVALID_ARGUMENT, not the INTERNAL that gRPC answers when a request cannot be deserialized.
- The caller's deadline is kept in a context variable so outbound calls derive their own from it
  (Python gRPC does not propagate deadlines).
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from services.runtime import metrics
from services.runtime.errors import AgentMeshError, InvalidArgument, internal_error, trailing_metadata_for

log = logging.getLogger(__name__)

# Monotonic time by which the current inbound call must be answered; None when the caller set none.
call_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("call_deadline", default=None)

RPC_TOTAL = metrics.Counter("agentmesh_rpc_total", "RPCs handled", ["method", "code"])
RPC_SECONDS = metrics.Histogram(
    "agentmesh_rpc_seconds",
    "RPC handling time (streams: until the last message)",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300),
)
# A long-lived stream (Executor.Session carries every exec action) is counted in RPC_TOTAL only when
# it ends: its traffic shows here, message by message, and how many are open.
STREAM_MESSAGES = metrics.Counter(
    "agentmesh_rpc_stream_messages_total", "messages on streaming RPCs", ["method", "direction"]
)
STREAMS_OPEN = metrics.Gauge("agentmesh_rpc_streams_open", "request streams open now", ["method"])


def remaining_timeout(default: float, margin: float = 0.05) -> float:
    """The timeout for an outbound call: `default`, shortened to the inbound call's remaining time."""
    deadline = call_deadline.get()
    if deadline is None:
        return default
    return max(0.001, min(default, deadline - time.monotonic() - margin))


async def _abort(context: grpc.aio.ServicerContext, error: AgentMeshError) -> None:
    await context.abort(error.code, error.message, trailing_metadata=trailing_metadata_for(error))


def _set_deadline(context: grpc.aio.ServicerContext) -> None:
    remaining = context.time_remaining()
    call_deadline.set(None if remaining is None else time.monotonic() + remaining)


def _on_unexpected(method: str, exc: BaseException) -> AgentMeshError:
    correlation = uuid.uuid4().hex[:12]
    log.error("unhandled error in %s (correlation id %s)", method, correlation, exc_info=exc)
    return internal_error(correlation)


class _Undecodable:
    """Stands in for a request that could not be parsed, so the handler can refuse it properly."""

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    return parse


def _check(request: Any) -> None:
    if isinstance(request, _Undecodable):
        raise InvalidArgument(
            f"the request is not a valid message ({request.error}); text fields must be valid UTF-8",
            reason="MALFORMED_REQUEST",
        )


def _wrap_unary(method: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        _set_deadline(context)
        started = time.perf_counter()
        code = "OK"
        try:
            _check(request)
            return await behavior(request, context)
        except AgentMeshError as exc:
            code = exc.code.name
            await _abort(context, exc)
        except (grpc.aio.AbortError, grpc.RpcError):
            code = "ABORTED_BY_HANDLER"
            raise
        except Exception as exc:  # noqa: BLE001 - the one place that turns unknowns into INTERNAL
            code = "INTERNAL"
            await _abort(context, _on_unexpected(method, exc))
        finally:
            RPC_TOTAL.labels(method, code).inc()
            RPC_SECONDS.labels(method).observe(time.perf_counter() - started)

    return handler


async def _checked(requests: AsyncIterator[Any], received: Any) -> AsyncIterator[Any]:
    """A request stream whose messages are checked (see _check) and counted as they come."""
    async for request in requests:
        received.inc()
        _check(request)
        yield request


def _wrap_stream(
    method: str, behavior: Callable[..., AsyncIterator[Any]], streamed_requests: bool = False
) -> Callable[..., AsyncIterator[Any]]:
    """A handler that answers with a stream; `streamed_requests`: it also takes one (bidi)."""

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        _set_deadline(context)
        started = time.perf_counter()
        code = "OK"
        sent = STREAM_MESSAGES.labels(method, "sent")  # looked up once, not per message
        if streamed_requests:
            STREAMS_OPEN.labels(method).inc()
        try:
            if streamed_requests:
                request = _checked(request, STREAM_MESSAGES.labels(method, "received"))
            else:
                _check(request)
            async for item in behavior(request, context):
                sent.inc()
                yield item
        except AgentMeshError as exc:
            code = exc.code.name
            await _abort(context, exc)
        except (grpc.aio.AbortError, grpc.RpcError):
            code = "ABORTED_BY_HANDLER"
            raise
        except Exception as exc:  # noqa: BLE001
            code = "INTERNAL"
            await _abort(context, _on_unexpected(method, exc))
        finally:
            if streamed_requests:
                STREAMS_OPEN.labels(method).dec()
            RPC_TOTAL.labels(method, code).inc()
            RPC_SECONDS.labels(method).observe(time.perf_counter() - started)

    return handler


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if method.startswith(("/grpc.health", "/grpc.reflection")):
            return handler
        if handler.unary_unary is not None:
            return handler._replace(
                unary_unary=_wrap_unary(method, handler.unary_unary),
                request_deserializer=_tolerant(handler.request_deserializer),
            )
        if handler.unary_stream is not None:
            return handler._replace(
                unary_stream=_wrap_stream(method, handler.unary_stream),
                request_deserializer=_tolerant(handler.request_deserializer),
            )
        if handler.stream_stream is not None:  # Executor.Session: every exec action goes through it
            return handler._replace(
                stream_stream=_wrap_stream(method, handler.stream_stream, streamed_requests=True),
                request_deserializer=_tolerant(handler.request_deserializer),
            )
        return handler  # no stream-unary RPC is declared
