"""The ZeroMQ bus: an XSUB/XPUB forwarder, and the publisher and subscriber every service uses.

Frames are `[topic, payload]`: topics are dotted strings (`task.<id>`, `cancel.<id>`), payloads are
serialized protobuf messages from `protos/agentmesh/v1/bus.proto` and `common.proto`.

The bus is a hint, never the truth: PUB drops at the high-water mark and a slow joiner misses what
was sent before its subscription arrived. Consumers dedupe and fill gaps from the store.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import zmq

log = logging.getLogger(__name__)

DEFAULT_HWM = 100_000


def make_socket(
    ctx: zmq.Context, kind: int, addr: str, *, bind: bool = False, hwm: int = DEFAULT_HWM
) -> zmq.Socket:
    """The one socket factory: linger 0 (never block exit on unsent hints), bounded queues."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    if bind:
        sock.bind(addr)
    else:
        sock.connect(addr)
    return sock


class Forwarder:
    """XSUB (publishers connect) <-> XPUB (subscribers connect), on a thread, stoppable."""

    def __init__(self, pub_side: str, sub_side: str) -> None:
        self.pub_side = pub_side
        self.sub_side = sub_side
        self._ctx = zmq.Context()
        self._control_addr = f"inproc://bus-control-{id(self)}"
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bus-forwarder", daemon=True)
        self._thread.start()
        self._ready.wait(5)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            frontend = make_socket(self._ctx, zmq.XSUB, self.pub_side, bind=True)
            backend = make_socket(self._ctx, zmq.XPUB, self.sub_side, bind=True)
            control = make_socket(self._ctx, zmq.PAIR, self._control_addr, bind=True)
        except zmq.ZMQError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            zmq.proxy_steerable(frontend, backend, None, control)
        finally:
            for sock in (frontend, backend, control):
                sock.close(linger=0)

    def stop(self) -> None:
        if self._thread is None:
            return
        control = make_socket(self._ctx, zmq.PAIR, self._control_addr)
        control.send(b"TERMINATE")
        control.close()
        self._thread.join(5)
        self._ctx.term()


class Publisher:
    """Sends never block: PUB drops at the high-water mark, which the design tolerates."""

    def __init__(self, ctx: zmq.Context, addr: str) -> None:
        self._sock = make_socket(ctx, zmq.PUB, addr)
        self.dropped = 0

    def publish(self, topic: str, payload: bytes) -> None:
        try:
            self._sock.send_multipart((topic.encode(), payload), flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1

    def close(self) -> None:
        self._sock.close(linger=0)


class Subscriber:
    """An asyncio SUB socket. Subscriptions are topic prefixes; callers match topics exactly."""

    def __init__(self, ctx: Any, addr: str) -> None:  # a zmq.asyncio.Context
        self._sock = make_socket(ctx, zmq.SUB, addr)

    def subscribe(self, prefix: str) -> None:
        self._sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())

    def unsubscribe(self, prefix: str) -> None:
        self._sock.setsockopt(zmq.UNSUBSCRIBE, prefix.encode())

    async def recv(self) -> tuple[str, bytes]:
        topic, payload = await self._sock.recv_multipart()
        return topic.decode(), payload

    def close(self) -> None:
        self._sock.close(linger=0)


class Bus:
    """A service's connection to the bus: one publisher, subscribers made on demand."""

    def __init__(self, pub_addr: str, sub_addr: str) -> None:
        import zmq.asyncio  # here, so the bus process itself never loads asyncio

        self.sub_addr = sub_addr
        self._ctx = zmq.asyncio.Context()
        # A plain (sync) PUB socket shares the context: PUB never blocks, so no future is needed.
        self.publisher = Publisher(zmq.Context.shadow(self._ctx.underlying), pub_addr)
        self._subscribers: list[Subscriber] = []

    def publish(self, topic: str, payload: bytes) -> None:
        self.publisher.publish(topic, payload)

    def subscriber(self, *prefixes: str) -> Subscriber:
        sub = Subscriber(self._ctx, self.sub_addr)
        for prefix in prefixes:
            sub.subscribe(prefix)
        self._subscribers.append(sub)
        return sub

    def close(self) -> None:
        for sub in self._subscribers:
            sub.close()
        self.publisher.close()
        self._ctx.term()
