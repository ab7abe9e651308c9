#!/usr/bin/env python3
"""1,000 concurrent small pipeline tasks with fan-out: completion throughput and coordinator memory.

Each task is a pipeline whose first step spawns `--children` child pipelines (each one sandboxed
`python` step, or `echo` with --echo), joined as all, then an `echo` step after the join. Every task
is submitted at once (256 submits in flight, retrying on 429); the benchmark waits for all of them
and samples the coordinator's RSS every 50 ms.

    .venv/bin/python scripts/bench/fanout.py [--tasks 1000] [--children 2] [--echo] [--store postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _common import report, rss_kb, start_mesh, submit_many

from agentmesh.client import AgentMeshClient
from agentmesh.local import TENANT_KEYS
from protos.agentmesh.v1 import common_pb2 as pb

WINDOW = 256


def spec(children: int, echo: bool) -> dict:
    child_step = (
        {"id": "work", "tool": "echo", "args": {"n": 1}}
        if echo
        else {"id": "work", "tool": "python", "args": {"code": "print(sum(range(1000)))"}}
    )
    return {
        "steps": [
            {
                "id": "fan",
                "tool": "spawn",
                "args": {"join": "all", "inputs": [{"steps": [child_step]} for _ in range(children)]},
            },
            {"id": "after", "tool": "echo", "depends_on": ["fan"]},
        ]
    }


async def measure(address: str, coordinator_pid: int, tasks: int, children: int, echo: bool) -> dict:
    peak = [rss_kb(coordinator_pid)]
    before = peak[0]
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kb(coordinator_pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.ensure_future(sample())
    body = spec(children, echo)
    async with AgentMeshClient(address, TENANT_KEYS["alpha"]) as client:
        started = time.perf_counter()
        ids = await submit_many(client, "pipeline", body, tasks, WINDOW)
        submitted = time.perf_counter() - started
        watchers = asyncio.Semaphore(WINDOW)  # tasks all run at once; we follow 256 at a time

        async def wait(task_id: str) -> pb.Task:
            async with watchers:
                return await client.wait(task_id)

        finals = await asyncio.gather(*[wait(i) for i in ids])
        elapsed = time.perf_counter() - started
    stop.set()
    await sampler
    ok = sum(1 for t in finals if t.state == pb.TASK_STATE_SUCCEEDED)
    return {
        "tasks": tasks,
        "children each": children,
        "child step": "echo" if echo else "python (sandboxed)",
        "succeeded": ok,
        "submit s": submitted,
        "all done s": elapsed,
        "parents/s": tasks / elapsed,
        "tasks/s incl. children": tasks * (1 + children) / elapsed,
        "coordinator RSS before MB": before / 1024,
        "coordinator RSS peak MB": peak[0] / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--echo", action="store_true", help="children run echo (no process)")
    parser.add_argument("--store", default="sqlite", help="sqlite (the default) or postgres")
    opts = parser.parse_args()
    mesh = start_mesh(opts.store)
    try:
        pid = mesh.children["coordinator"].pid
        row = {"store": opts.store}
        row.update(asyncio.run(measure(mesh.coordinator_addr, pid, opts.tasks, opts.children, opts.echo)))
    finally:
        mesh.stop()
    report(
        "fanout", f"{opts.tasks} concurrent pipelines, each fanning out to {opts.children} children", [row]
    )


if __name__ == "__main__":
    main()
