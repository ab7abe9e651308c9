#!/usr/bin/env python3
"""Cancel latency: CancelTask until the last process of the task is dead, p50/p99.

Each task runs a shell step, fully sandboxed, whose tree is a shell, a child that escaped into its
own session (setsid) and two sleepers; the benchmark finds their pids in the action's cgroup (the
sandbox has its own pid namespace and cannot write host files), calls CancelTask, and polls /proc
until none of them, bubblewrap included, is left alive.

    .venv/bin/python scripts/bench/cancel.py [--cancels 200]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _common import percentile, report, start_mesh

from agentmesh.client import AgentMeshClient
from agentmesh.local import TENANT_KEYS, Mesh
from services.runtime.procs import pid_alive

SPEC = {
    "steps": [
        {
            "id": "tree",
            "tool": "shell",
            "args": {"command": "setsid sh -c 'sleep 600' & sleep 600 & wait"},
            "timeout_s": 900,
        }
    ]
}


async def measure(mesh: Mesh, cancels: int) -> tuple[list[float], list[float]]:
    to_dead, to_reply = [], []
    async with AgentMeshClient(mesh.coordinator_addr, TENANT_KEYS["alpha"]) as client:
        for _ in range(cancels):
            task = await client.submit("pipeline", SPEC)
            deadline = time.monotonic() + 20
            procs: dict[int, str] = {}
            while sum(1 for name in procs.values() if name == "sleep") < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the task's processes did not start: {procs}")
                await asyncio.sleep(0.005)
                procs = mesh.action_processes()
            pids = list(procs)
            started = time.perf_counter()
            await client.cancel(task.id)
            to_reply.append((time.perf_counter() - started) * 1000)
            while any(pid_alive(p) for p in pids):  # a busy poll: the figure is the point
                if time.perf_counter() - started > 10:
                    raise RuntimeError(f"processes outlived the cancel: {pids}")
            to_dead.append((time.perf_counter() - started) * 1000)
            await client.wait(task.id)
    return to_dead, to_reply


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cancels", type=int, default=200)
    opts = parser.parse_args()
    mesh = start_mesh()
    try:
        dead, reply = asyncio.run(measure(mesh, opts.cancels))
    finally:
        mesh.stop()
    rows = [
        {
            "metric": "CancelTask -> last process dead (ms)",
            "p50": percentile(dead, 50),
            "p99": percentile(dead, 99),
            "max": max(dead),
        },
        {
            "metric": "CancelTask reply (ms)",
            "p50": percentile(reply, 50),
            "p99": percentile(reply, 99),
            "max": max(reply),
        },
    ]
    report(
        "cancel",
        f"{opts.cancels} cancels of a sandboxed tree (bwrap, its init, a shell, a setsid escapee, sleepers)",
        rows,
        {"target_p99_ms": 10},
    )


if __name__ == "__main__":
    main()
