#!/usr/bin/env python3
"""Cancel latency: CancelTask until the last process of the task is dead, p50/p99; also until the
call's reply, and until the task is CANCELLED.

Each task runs a shell step, fully sandboxed, whose tree is a shell, a child that escaped into its
own session (setsid) and two sleepers; the benchmark finds their pids in the action's cgroup (the
sandbox has its own pid namespace and cannot write host files), opens a pidfd on each, calls
CancelTask, and waits in poll(2) on another thread until every one, bubblewrap included, has exited.
The reply and the deaths are timed apart: the kill does not wait for the reply.

    .venv/bin/python scripts/bench/cancel.py [--cancels 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import select
import time

from _common import percentile, report, start_mesh

from agentmesh.client import AgentMeshClient
from agentmesh.local import TENANT_KEYS, Mesh

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


def _wait_dead(pidfds: list[int], started: float) -> float:
    """Seconds from `started` until every process is dead. A pidfd turns readable when its process
    exits, so the wait sleeps in poll(2): no busy loop competing with the mesh for the two cores."""
    poller = select.poll()
    for fd in pidfds:
        poller.register(fd, select.POLLIN)
    left = set(pidfds)
    try:
        while left:
            remaining_ms = 10_000 - (time.perf_counter() - started) * 1000
            if remaining_ms <= 0:
                raise RuntimeError(f"{len(left)} processes outlived the cancel by 10 s")
            for fd, _ in poller.poll(remaining_ms):
                poller.unregister(fd)
                left.discard(fd)
        return time.perf_counter() - started
    finally:
        for fd in pidfds:
            os.close(fd)


def _open_pidfds(pids: list[int]) -> list[int]:
    fds = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # already gone: nothing to wait for
            fds.append(os.pidfd_open(pid))
    return fds


async def measure(mesh: Mesh, cancels: int) -> tuple[list[float], list[float], list[float]]:
    to_dead, to_reply, to_ended = [], [], []
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
            # Watched from a thread: the processes may die before the reply comes (the kill does not
            # wait for the durable write the reply waits for), and a poll on this loop would stall
            # the call.
            pidfds = _open_pidfds(pids)
            started = time.perf_counter()
            watcher = asyncio.get_running_loop().run_in_executor(None, _wait_dead, pidfds, started)
            await client.cancel(task.id)
            to_reply.append((time.perf_counter() - started) * 1000)
            to_dead.append((await watcher) * 1000)
            # The task's own end: its actions stopped and recorded (with what they used), CANCELLED.
            await client.wait(task.id)
            to_ended.append((time.perf_counter() - started) * 1000)
    return to_dead, to_reply, to_ended


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cancels", type=int, default=200)
    opts = parser.parse_args()
    mesh = start_mesh()
    try:
        dead, reply, ended = asyncio.run(measure(mesh, opts.cancels))
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
        {
            "metric": "CancelTask -> task CANCELLED, seen by a watcher (ms)",
            "p50": percentile(ended, 50),
            "p99": percentile(ended, 99),
            "max": max(ended),
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
