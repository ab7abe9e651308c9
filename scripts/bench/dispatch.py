#!/usr/bin/env python3
"""Dispatch throughput: trivial actions end to end against a raw grpc.aio echo floor, same run.

Ours: pipeline tasks of N independent `echo` steps; each action goes coordinator -> executor
(the built-in echo tool, no process) -> result persisted durably (fsync'd group commit) with its
events. The floor: a bare grpc.aio unary echo between two processes, at the same concurrency as the
coordinator's exec in-flight limit. Both on uvloop.

    .venv/bin/python scripts/bench/dispatch.py [--tasks 4 --steps 1000 --concurrency 64] [--store postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import uvloop
from _common import report, start_mesh

from agentmesh.client import AgentMeshClient
from agentmesh.local import TENANT_KEYS
from protos.agentmesh.v1 import common_pb2 as pb
from services.runtime.procs import free_port

PAYLOAD = b'{"i": 0, "pad": "' + b"x" * 64 + b'"}'


async def floor(port: int, total: int, concurrency: int) -> float:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/bench.Echo/Echo")
        for _ in range(200):
            await call(PAYLOAD)
        left = total
        started = time.perf_counter()

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await call(PAYLOAD)

        await asyncio.gather(*[worker() for _ in range(concurrency)])
        return total / (time.perf_counter() - started)


async def ours(address: str, tasks: int, steps: int) -> tuple[float, float]:
    steps_spec = [{"id": f"s{i}", "tool": "echo", "args": {"i": i, "pad": "x" * 64}} for i in range(steps)]
    spec = {"steps": steps_spec}
    async with AgentMeshClient(address, TENANT_KEYS["alpha"]) as client:
        warm = await client.submit("pipeline", {"steps": spec["steps"][:100]})
        await client.wait(warm.id)
        started = time.perf_counter()
        submitted = await asyncio.gather(*[client.submit("pipeline", spec) for _ in range(tasks)])
        finals = [await _poll_until_done(client, t.id) for t in submitted]
        elapsed = time.perf_counter() - started
        assert all(t.state == pb.TASK_STATE_SUCCEEDED for t in finals), [t.error for t in finals]
        return tasks * steps / elapsed, elapsed


async def _poll_until_done(client: AgentMeshClient, task_id: str) -> pb.Task:
    # Polling rather than watching: a watcher of 2,000+ events per task would compete for the CPU.
    while True:
        task = await client.get(task_id)
        if task.state in (pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELLED):
            return task
        await asyncio.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating floor/ours rounds; medians reported"
    )
    parser.add_argument("--store", default="sqlite", help="sqlite (the default) or postgres")
    opts = parser.parse_args()
    total = opts.tasks * opts.steps

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("echo_floor.py")), str(port)], stdout=subprocess.PIPE
    )
    mesh = start_mesh(opts.store, AGENTMESH_MAX_INFLIGHT_EXEC=str(opts.concurrency))
    floors, rates = [], []
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
        for _ in range(opts.rounds):  # alternate, so both see the same machine weather
            floors.append(uvloop.run(floor(port, total, opts.concurrency)))
            rates.append(uvloop.run(ours(mesh.coordinator_addr, opts.tasks, opts.steps))[0])
    finally:
        mesh.stop()
        server.terminate()
        server.wait(10)
    floor_rate, rate = statistics.median(floors), statistics.median(rates)
    rows = [
        {"path": "raw grpc.aio unary echo (floor)", "actions/s": floor_rate, "ratio": 1.0},
        {
            "path": f"agentmesh echo action, durable ({opts.store})",
            "actions/s": rate,
            "ratio": rate / floor_rate,
        },
    ]
    report(
        "dispatch",
        f"{total} trivial actions x {opts.rounds} rounds, {opts.concurrency} in flight (medians)",
        rows,
        {"floor_rounds": floors, "ours_rounds": rates, "target_ratio": 0.6},
    )


if __name__ == "__main__":
    main()
