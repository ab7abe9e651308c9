#!/usr/bin/env python3
"""Cancel latency: CancelTask until the last process of the task is dead, p50/p99.

Each task runs a shell step whose tree is a shell, a child that escaped into its own session
(setsid) and two sleepers; the benchmark learns their pids from a file the step writes, calls
CancelTask, and polls /proc until none is left alive.

    .venv/bin/python scripts/bench/cancel.py [--cancels 200]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from _common import percentile, report, start_mesh

from agentmesh.client import AgentMeshClient
from agentmesh.local import TENANT_KEYS
from services.runtime.procs import pid_alive


def spec(pid_file: Path) -> dict:
    command = (
        f"echo $$ >> {pid_file}; setsid sh -c 'echo $$ >> {pid_file}; sleep 600' & "
        f"sleep 600 & echo $! >> {pid_file}; wait"
    )
    return {"steps": [{"id": "tree", "tool": "shell", "args": {"command": command}, "timeout_s": 900}]}


async def measure(address: str, cancels: int, workdir: Path) -> tuple[list[float], list[float]]:
    to_dead, to_reply = [], []
    async with AgentMeshClient(address, TENANT_KEYS["alpha"]) as client:
        for i in range(cancels):
            pid_file = workdir / f"pids-{i}"
            task = await client.submit("pipeline", spec(pid_file))
            deadline = time.monotonic() + 20
            pids: list[int] = []
            while len(pids) < 3:
                if time.monotonic() > deadline:
                    raise RuntimeError("the task's processes did not start")
                await asyncio.sleep(0.005)
                if pid_file.exists():
                    pids = [int(p) for p in pid_file.read_text().split()]
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
        with tempfile.TemporaryDirectory() as tmp:
            dead, reply = asyncio.run(measure(mesh.coordinator_addr, opts.cancels, Path(tmp)))
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
        f"{opts.cancels} cancels of a 4-process tree (one setsid escapee)",
        rows,
        {"target_p99_ms": 10},
    )


if __name__ == "__main__":
    main()
