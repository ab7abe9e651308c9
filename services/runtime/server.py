"""One bootstrap for every gRPC service.

Start: logging -> grpc.aio server with the shared interceptor -> health NOT_SERVING -> reflection ->
bind -> start -> `service.setup()` (may load models) -> SERVING -> wait.
Stop (SIGTERM/SIGINT): health NOT_SERVING -> `service.drain()` -> `server.stop(grace)` -> cancel owned
tasks -> `service.close()` -> exit 0. A second signal exits at once with status 1.
An owned background task that crashes brings the process down with status 1 and a log line.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import signal
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from services.runtime import metrics
from services.runtime.channels import SERVER_OPTIONS
from services.runtime.config import CommonConfig
from services.runtime.debug import add_debug_service
from services.runtime.interceptors import ServiceInterceptor
from services.runtime.logs import setup_logging

if TYPE_CHECKING:
    from services.runtime.bus import Bus

log = logging.getLogger(__name__)


class Runtime:
    """What the bootstrap hands a service: its server, bus, health and a supervisor for owned tasks."""

    def __init__(
        self,
        name: str,
        config: CommonConfig,
        server: grpc.aio.Server,
        health: health_aio.HealthServicer,
    ) -> None:
        self.name = name
        self.config = config
        self.server = server
        self.health = health
        self._bus: Bus | None = None
        self.port = 0
        self.service_names: list[str] = []
        self._owned: set[asyncio.Task[Any]] = set()
        self.crashed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    @property
    def bus(self) -> Bus:
        """This service's bus connection, made on first use: a service that never publishes or
        subscribes (the planner) never loads ZeroMQ, its two I/O threads or its 2 MB."""
        if self._bus is None:
            from services.runtime.bus import Bus  # noqa: PLC0415 - see above

            self._bus = Bus(self.config.bus_pub_addr, self.config.bus_sub_addr)
        return self._bus

    def close_bus(self) -> None:
        if self._bus is not None:
            self._bus.close()
            self._bus = None

    def add_service_name(self, full_name: str) -> None:
        self.service_names.append(full_name)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run an owned background task. If it ends with an exception, the process goes down."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._owned.add(task)
        task.add_done_callback(self._owned_done)
        return task

    def _owned_done(self, task: asyncio.Task[Any]) -> None:
        self._owned.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not self.crashed.done():
            log.critical("owned task %s crashed; shutting down", task.get_name(), exc_info=exc)
            self.crashed.set_result(exc)

    async def cancel_owned(self) -> None:
        tasks = list(self._owned)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Service(abc.ABC):
    """Base of every service. Subclasses register servicers in `setup` and own their state."""

    name = "service"
    # uvloop serves gRPC faster; a service whose hot path is starting processes (the executor) runs on
    # asyncio's own loop instead, which spawns with vfork (libuv forks the whole, large, process).
    event_loop = "uvloop"

    @abc.abstractmethod
    async def setup(self, rt: Runtime) -> None:
        """Register servicers (with `rt.add_service_name`) and start owned tasks; SERVING follows."""

    async def warm(self, rt: Runtime) -> None:
        """Slow start-up work (loading a model) done after the port is open; health says NOT_SERVING
        until it returns."""

    async def drain(self) -> None:
        """Stop taking new work and finish or hand back what is in flight."""

    async def close(self) -> None:
        """Release sockets, channels, files."""


async def _serve(service: Service, config: CommonConfig, listen: str) -> int:
    metrics.configure(enabled=bool(config.metrics_port))
    server = grpc.aio.server(interceptors=[ServiceInterceptor()], options=SERVER_OPTIONS)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    rt = Runtime(service.name, config, server, health)
    await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.warning("second signal: exiting now")
            os._exit(1)
        log.info("received %s: draining", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    try:
        rt.port = server.add_insecure_port(listen)  # the port bound: another than asked for if 0
    except RuntimeError as exc:
        log.error("cannot listen on %s: %s", listen, exc)
        rt.close_bus()
        return 2
    # Handlers must be registered before the server starts; slow work goes in `warm`.
    await service.setup(rt)
    rt.add_service_name(add_debug_service(server, service.name, config.admin_key, config.data_dir))
    reflection.enable_server_reflection(
        (
            *rt.service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    await server.start()
    await service.warm(rt)
    _release_startup_memory()
    for name in ("", *rt.service_names):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    if config.metrics_port:
        metrics.serve(config.metrics_port)
    log.info("%s serving on %s (pid %d)", service.name, listen, os.getpid())

    stop_waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait((stop_waiter, rt.crashed), return_when=asyncio.FIRST_COMPLETED)
    exit_code = 1 if rt.crashed.done() else 0
    stop_waiter.cancel()

    await health.enter_graceful_shutdown()
    try:
        await asyncio.wait_for(service.drain(), config.shutdown_grace_s)
    except TimeoutError:
        log.warning("drain took longer than %.1fs; stopping anyway", config.shutdown_grace_s)
    await server.stop(config.shutdown_grace_s)
    await rt.cancel_owned()
    await service.close()
    rt.close_bus()
    log.info("%s stopped (exit %d)", service.name, exit_code)
    return exit_code


def _release_startup_memory() -> None:
    """Hand the heap that imports and model loading freed back to the OS (glibc keeps it otherwise)."""
    import contextlib  # noqa: PLC0415
    import ctypes  # noqa: PLC0415
    import gc  # noqa: PLC0415

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def run(service: Service, config: CommonConfig, listen: str) -> int:
    setup_logging(service.name, config.log_level, config.log_format)
    if service.event_loop == "asyncio":
        return asyncio.run(_serve(service, config, listen))
    import uvloop  # noqa: PLC0415 - only where it runs: 1 MB of RSS the executor would not use

    return uvloop.run(_serve(service, config, listen))
