"""A whole mesh as real processes on free loopback ports: for tests, benchmarks and embedding.

Every process is started fresh, probed for readiness with a deadline (failing fast with its log if
it died), and stopped by pid at the end -- SIGTERM, then SIGKILL -- even when the test failed.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

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
        for name in ("bus", "planner", "executor", "inference", "coordinator", "gateway"):
            flags = self.coordinator_flags if name == "coordinator" else []
            self.children[name] = self.sup.add(
                Child(
                    name,
                    service_argv(name, *flags),
                    probes[name],
                    env=self.env,
                    log_path=self.logs / f"{name}.log",
                )
            )

    def start(self) -> Mesh:
        self.sup.start(deadline_s=60)
        return self

    def pid(self, name: str) -> int:
        return self.children[name].pid

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
        return self.sup.stop(grace_s=10)

    def dump_logs(self) -> None:
        for child in self.children.values():
            sys.stderr.write(f"----- {child.name} -----\n{child.log_tail(60)}\n")
