"""Server-Sent Events for `GET /v1/tasks/{id}/events`.

One stream per HTTP request, fed by one gRPC `WatchTask` call. Guarantees:
- each task event is sent as `id: <seq>`, `event: <kind>`, `data: <event JSON>` (one line of JSON);
- an idle stream gets a comment line every `keepalive_s`, so proxies and clients see it alive;
- the stream ends after the task's terminal state event (the watch ends there), when the gateway
  drains for shutdown, or with an `event: error` when the watch fails midway (the client reconnects
  with `Last-Event-ID` and misses nothing: the coordinator replays from the store);
- when the HTTP client goes away, the gRPC watch is cancelled: no stream outlives its reader.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import Counter, Gauge

from gateway.errors import error_body, unexpected_error
from protos.agentmesh.v1 import common_pb2
from services.runtime.errors import AgentMeshError
from services.runtime.wire import event_to_dict

log = logging.getLogger(__name__)

SSE_STREAMS = Gauge("agentmesh_gateway_sse_streams", "Event streams open now")
SSE_EVENTS = Counter("agentmesh_gateway_sse_events_total", "Task events sent on event streams")

# Browsers reconnect after this many milliseconds when a stream drops.
RETRY_MS = 3000
STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    # nginx buffers responses unless told not to, which would hold events back.
    "X-Accel-Buffering": "no",
}


def _one_line(text: str) -> str:
    # An SSE field ends at CR or LF; a kind containing one would split the event.
    return text.replace("\r", " ").replace("\n", " ")


def format_event(event: common_pb2.Event) -> bytes:
    data = json.dumps(event_to_dict(event), separators=(",", ":"))  # json.dumps escapes newlines
    return f"id: {event.seq}\nevent: {_one_line(event.kind) or 'message'}\ndata: {data}\n\n".encode()


def format_error(error: AgentMeshError) -> bytes:
    return f"event: error\ndata: {json.dumps(error_body(error), separators=(',', ':'))}\n\n".encode()


def format_comment(text: str) -> bytes:
    return f": {_one_line(text)}\n\n".encode()


async def _next(events: AsyncIterator[common_pb2.Event]) -> common_pb2.Event:
    return await events.__anext__()


async def event_stream(
    events: AsyncIterator[common_pb2.Event], *, keepalive_s: float, draining: asyncio.Event, task_id: str
) -> AsyncIterator[bytes]:
    """Turn a `client.watch(...)` iterator into SSE bytes; see the module docstring for guarantees."""
    SSE_STREAMS.inc()
    pending: asyncio.Task[Any] | None = None
    drain_wait = asyncio.ensure_future(draining.wait())
    try:
        yield f"retry: {RETRY_MS}\n".encode() + format_comment("stream open")
        while True:
            # The read is a task of its own so a keepalive can go out while it waits: cancelling the
            # read itself (wait_for) would end the watch generator.
            if pending is None:
                pending = asyncio.ensure_future(_next(events))
            done, _ = await asyncio.wait(
                {pending, drain_wait}, timeout=keepalive_s, return_when=asyncio.FIRST_COMPLETED
            )
            if pending in done:
                finished, pending = pending, None
                try:
                    event = finished.result()
                except StopAsyncIteration:
                    return
                except AgentMeshError as exc:
                    log.info("event stream for %s ended by %s", task_id, exc)
                    yield format_error(exc)
                    return
                except Exception as exc:  # headers are out: report in-band, then end
                    yield format_error(unexpected_error(exc, f"event stream of {task_id}"))
                    return
                SSE_EVENTS.inc()
                yield format_event(event)
            elif drain_wait in done:
                log.info("gateway draining: closing the event stream of %s", task_id)
                return
            else:
                yield format_comment("keepalive")
    finally:
        # Runs on normal end, on error and on client disconnect (the response task is cancelled).
        drain_wait.cancel()
        if pending is not None and not pending.done():
            # Cancelling the read throws into the watch generator, whose `finally` cancels the gRPC
            # call. A read cancelled before it even started leaves the generator parked at a `yield`,
            # so close it too once the read is over (a no-op when the cancellation already did).
            pending.cancel()
            pending.add_done_callback(lambda _: _close_soon(events, task_id))
        else:
            if pending is not None and not pending.cancelled():
                pending.exception()  # a read that finished as we left: mark its outcome as seen
            # The watch generator is parked at a `yield` (or done): closing it runs its `finally`
            # (call.cancel()) without suspending, so this completes even under cancellation.
            await _close(events, task_id)
        SSE_STREAMS.dec()


# Closers scheduled from callbacks, kept referenced until they finish (the loop holds tasks weakly).
_closing: set[asyncio.Task[None]] = set()


async def _close(events: AsyncIterator[Any], task_id: str) -> None:
    closer = getattr(events, "aclose", None)
    if closer is None:
        return
    try:
        await closer()
    except (Exception, asyncio.CancelledError):  # best effort: the stream is over either way
        log.debug("closing the watch of %s", task_id, exc_info=True)


def _close_soon(events: AsyncIterator[Any], task_id: str) -> None:
    task = asyncio.ensure_future(_close(events, task_id))
    _closing.add(task)
    task.add_done_callback(_closing.discard)
