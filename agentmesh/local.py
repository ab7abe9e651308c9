"""A whole mesh as real processes on free loopback ports: for tests, benchmarks and embedding.

Every process is started fresh, probed for readiness with a deadline (failing fast with its log if
it died), and stopped by pid at the end -- SIGTERM, then SIGKILL -- even when the test failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.runtime.procs import (
    Child,
    Supervisor,
    free_port,
    grpc_ready,
    http_ready,
    service_argv,
    tcp_ready,
)

TENANT_KEYS = {"alpha": "key-alpha-0123456789", "beta": "key-beta-0123456789"}


@dataclass
class Mesh:
    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    coordinator_flags: list[str] = field(default_factory=list)
    models: bool = False

    def __post_init__(self) -> None:
        self.data_dir = self.root / "data"
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        ports = {
            name: free_port()
            for name in ("coordinator", "planner", "executor", "inference", "gateway", "bus_pub", "bus_sub")
        }
        self.coordinator_addr = f"127.0.0.1:{ports['coordinator']}"
        self.gateway_url = f"http://127.0.0.1:{ports['gateway']}"
        self.env = {
            "AGENTMESH_COORDINATOR_ADDR": self.coordinator_addr,
            "AGENTMESH_PLANNER_ADDR": f"127.0.0.1:{ports['planner']}",
            "AGENTMESH_EXECUTOR_ADDR": f"127.0.0.1:{ports['executor']}",
            "AGENTMESH_INFERENCE_ADDR": f"127.0.0.1:{ports['inference']}",
            "AGENTMESH_GATEWAY_ADDR": f"127.0.0.1:{ports['gateway']}",
            "AGENTMESH_BUS_PUB_ADDR": f"tcp://127.0.0.1:{ports['bus_pub']}",
            "AGENTMESH_BUS_SUB_ADDR": f"tcp://127.0.0.1:{ports['bus_sub']}",
            "AGENTMESH_DATA_DIR": str(self.data_dir),
            "AGENTMESH_API_KEYS": ",".join(f"{t}={k}" for t, k in TENANT_KEYS.items()),
            "AGENTMESH_SHUTDOWN_GRACE_S": "3",
            "AGENTMESH_METRICS_PORT": "0",
            # No models unless asked for: most tests need none, and loading takes seconds and memory.
            "AGENTMESH_GENERATE_MODEL": "default" if self.models else "none",
            "AGENTMESH_EMBED_MODEL": "default" if self.models else "none",
            **self.extra_env,
        }
        self.sup = Supervisor()
        probes = {
            "bus": tcp_ready(self.env["AGENTMESH_BUS_SUB_ADDR"]),
            "planner": grpc_ready(self.env["AGENTMESH_PLANNER_ADDR"]),
            "executor": grpc_ready(self.env["AGENTMESH_EXECUTOR_ADDR"]),
            "inference": grpc_ready(self.env["AGENTMESH_INFERENCE_ADDR"]),
            "coordinator": grpc_ready(self.coordinator_addr),
            "gateway": http_ready(self.gateway_url + "/healthz"),
        }
        self.children = {}
        # Each gRPC service serves Prometheus metrics on a port of its own.
        self.metrics_ports = {
            name: free_port() for name in ("planner", "executor", "inference", "coordinator")
        }
        for name in ("bus", "planner", "executor", "inference", "coordinator", "gateway"):
            flags = self.coordinator_flags if name == "coordinator" else []
            env = {**self.env, "AGENTMESH_METRICS_PORT": str(self.metrics_ports.get(name, 0))}
            self.children[name] = self.sup.add(
                Child(
                    name,
                    service_argv(name, *flags),
                    probes[name],
                    env=env,
                    log_path=self.logs / f"{name}.log",
                )
            )

    def start(self) -> Mesh:
        self.sup.start(deadline_s=60)
        return self

    def pid(self, name: str) -> int:
        return self.children[name].pid

    def add_coordinator(self, name: str) -> str:
        """Start one more coordinator beside the first, on the same store (a shared PostgreSQL
        one: set AGENTMESH_STORE_URL) and the same workers; its address. Stopped with the mesh."""
        addr = f"127.0.0.1:{free_port()}"
        env = {
            **self.env,
            "AGENTMESH_DATA_DIR": str(self.root / f"data-{name}"),
            "AGENTMESH_METRICS_PORT": str(free_port()),
        }
        self.children[name] = self.sup.add(
            Child(
                name,
                service_argv("coordinator", "--listen", addr),
                grpc_ready(addr),
                env=env,
                log_path=self.logs / f"{name}.log",
            )
        )
        self.children[name].start()
        self.sup.wait_ready(60)
        return addr

    def add_worker(self, name: str, agents: str, **env: str) -> str:
        """Start an agent worker (`agentmesh worker`) with id `name`, serving `agents` (module
        paths or .py files) in strict mode, registered with this mesh's coordinator; its address.
        Stopped with the mesh. It is ready once the coordinator lists it (see testing.registered)."""
        addr = f"127.0.0.1:{free_port()}"
        argv = [sys.executable, "-m", "agentmesh", "worker", "--listen", addr, "--worker-id", name]
        child_env = {
            **self.env,
            "AGENTMESH_AGENTS": agents,
            "AGENTMESH_STRICT": "true",
            "AGENTMESH_METRICS_PORT": "0",
            **env,
        }
        self.children[name] = self.sup.add(
            Child(name, argv, grpc_ready(addr), env=child_env, log_path=self.logs / f"{name}.log")
        )
        self.children[name].start()
        self.sup.wait_ready(60)
        return addr

    def kill9(self, name: str) -> None:
        child = self.children[name]
        os.kill(child.pid, signal.SIGKILL)
        child.proc.wait(10)  # type: ignore[union-attr]

    def restart(self, name: str) -> None:
        child = self.children[name]
        child.is_ready = False
        child.start()
        self.sup.wait_ready(60)

    def all_alive(self) -> bool:
        return all(c.alive() for c in self.children.values())

    def stop(self) -> dict[str, int | None]:
        codes = self.sup.stop(grace_s=10)
        # An executor killed with -9 leaves its workspaces (tmpfs mounts) and cgroups behind for the
        # next one to reap; this mesh is gone, so remove them now.
        remove_executor_leftovers(self.executor_instance)
        return codes

    @property
    def executor_instance(self) -> str:
        return "exec-" + self.env["AGENTMESH_EXECUTOR_ADDR"].rsplit(":", 1)[1]

    def action_processes(self) -> dict[int, str]:
        """pid -> command name of every process in the executor's action cgroups (its ready warm
        sandboxes left out): how tests and benchmarks see into sandboxes, whose processes have their
        own pid namespace and cannot write host files."""
        from services.executor.cgroups import kill_base
        from services.executor.warm import looks_idle

        base = kill_base(self.executor_instance)
        found: dict[int, str] = {}
        if base is None or not base.exists():
            return found
        for procs in base.glob("*/cgroup.procs"):
            try:
                pids = [int(p) for p in procs.read_text().split()]
            except (OSError, ValueError):
                continue
            if looks_idle(procs.parent, pids):
                continue
            for pid in pids:
                with contextlib.suppress(OSError):
                    found[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
        return found

    def dump_logs(self) -> None:
        for child in self.children.values():
            sys.stderr.write(f"----- {child.name} -----\n{child.log_tail(60)}\n")


def remove_executor_leftovers(instance: str) -> None:
    from services.executor.cgroups import CgroupRoot
    from services.executor.workspace import Workspaces

    with contextlib.suppress(OSError):
        Workspaces("", instance, os.getuid(), os.getgid(), want_tmpfs=False).close()
    cgroups = CgroupRoot.probe(instance)
    if cgroups is not None:
        cgroups.remove()


def up_command(data_dir: Path, ready_file: Path) -> tuple[list[str], dict[str, str]]:
    """argv and environment for `agentmesh up` on free loopback ports, with none of the caller's
    AGENTMESH_* settings leaking in; `ready_file` receives the start-up time and the pids."""
    flags = ["--data-dir", str(data_dir), "--ready-file", str(ready_file)]
    for name in ("coordinator", "planner", "executor", "inference", "gateway"):
        flags += [f"--{name}-addr", f"127.0.0.1:{free_port()}"]
    for side in ("pub", "sub"):
        flags += [f"--bus-{side}-addr", f"tcp://127.0.0.1:{free_port()}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
    return [sys.executable, "-m", "agentmesh", "up", *flags], env


def wait_ready_file(
    proc: subprocess.Popen[bytes], ready_file: Path, deadline_s: float = 60.0
) -> dict[str, Any]:
    """The ready file's content once `agentmesh up` wrote it; RuntimeError if it exited or timed out."""
    deadline = time.monotonic() + deadline_s
    while not ready_file.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"agentmesh up exited with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"agentmesh up was not ready within {deadline_s:g}s")
        time.sleep(0.02)
    return json.loads(ready_file.read_text())


def reap_up(proc: subprocess.Popen[bytes], pids: list[int]) -> None:
    """After a test of `agentmesh up`: kill it and every service it started, by pid, if still alive."""
    from services.runtime.procs import pid_alive

    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
