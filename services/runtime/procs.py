"""Process supervision for `agentmesh up` and the tests.

Children are started fresh (never forked from a process that runs gRPC), their output goes to one
log file each, readiness is probed with a shared deadline (failing fast if a child died), and
teardown is SIGTERM to all -> one shared deadline -> SIGKILL of whatever is left.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a zombie has exited, only not been reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port that is free now and that no outgoing connection will take before our child
    binds it.

    Asking the kernel for port 0 hands out a port from the ephemeral range, the same range the
    kernel draws from for every outgoing connection; between our probe and the child's bind, some
    client socket on the machine can take it (CI saw a metrics port lost that way). A port below
    the ephemeral range is only ever taken by an explicit bind, so we probe random ones there, and
    never hand out the same one twice in this process.
    """
    low, _high = _ephemeral_range()
    floor = 10000 if low > 12000 else 1024
    rng = random.SystemRandom()
    # A host whose ephemeral range starts at or near 1024 leaves no room below it: kernel's choice.
    for _ in range(200 if low - floor >= 1000 else 0):
        port = rng.randrange(floor, low)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:  # a crowded range: fall back to the kernel's choice
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def grpc_ready(address: str) -> Callable[[], bool]:
    def probe() -> bool:
        with grpc.insecure_channel(address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=0.5
                )
            except grpc.RpcError:
                return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING

    return probe


def http_ready(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        # Imported here: the executor imports this module, and urllib.request brings http.client and
        # email, a few MB of RSS it would never use.
        import urllib.request  # noqa: PLC0415

        try:
            with urllib.request.urlopen(url, timeout=0.5) as reply:  # noqa: S310 - loopback URL we built
                return reply.status == 200
        except OSError:
            return False

    return probe


def tcp_ready(address: str) -> Callable[[], bool]:
    host, _, port = address.removeprefix("tcp://").rpartition(":")

    def probe() -> bool:
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return True
        except OSError:
            return False

    return probe


class ChildDied(RuntimeError):
    pass


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    ready: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    is_ready: bool = False

    def start(self) -> None:
        env = {**os.environ, **self.env}
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                list(self.argv), env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def service_argv(service: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "agentmesh", "serve", service, *flags]


class Supervisor:
    """Owns a set of child processes; `stop()` leaves none of them running."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def add(self, child: Child) -> Child:
        self.children.append(child)
        return child

    def start(self, deadline_s: float = 30.0) -> None:
        """Start every child, then wait until each is ready; raise ChildDied if one exits first."""
        for child in self.children:
            if child.proc is None:
                child.start()
        self.wait_ready(deadline_s)

    def wait_ready(self, deadline_s: float = 30.0) -> None:
        deadline = time.monotonic() + deadline_s
        pending = [c for c in self.children if not c.is_ready]
        while pending:
            for child in list(pending):
                if not child.alive():
                    raise ChildDied(
                        f"{child.name} exited with {child.proc and child.proc.returncode} "
                        f"before it was ready:\n{child.log_tail()}"
                    )
                if child.ready():
                    child.is_ready = True
                    pending.remove(child)
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending)
                raise TimeoutError(
                    f"not ready after {deadline_s}s: {names}\n" + "\n".join(c.log_tail() for c in pending)
                )
            if pending:
                time.sleep(0.02)

    def dead_children(self) -> list[Child]:
        return [c for c in self.children if c.proc is not None and not c.alive()]

    def stop(self, grace_s: float = 10.0) -> dict[str, int | None]:
        """SIGTERM everything (last started first), one shared deadline, then SIGKILL the rest."""
        for child in reversed(self.children):
            if child.alive():
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + grace_s
        for child in reversed(self.children):
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
        return {c.name: (c.proc.returncode if c.proc else None) for c in self.children}
