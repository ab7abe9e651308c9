#!/usr/bin/env python3
"""Coordinator memory per waiting task: RSS with 10k and 100k tasks parked in an `approval` step.

A parked (WAITING) task holds no worker and, in agentmesh, nothing in memory: it lives in the store
until an input, a timer or a child wakes it. The figure is (RSS with N parked - RSS before) / N.

    .venv/bin/python scripts/bench/memory.py [--counts 10000,100000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

from _common import report, rss_kb, start_mesh, submit_many

from agentmesh.client import AgentMeshClient
from agentmesh.local import TENANT_KEYS
from protos.agentmesh.v1 import common_pb2 as pb

SPEC = {"steps": [{"id": "ask", "tool": "approval", "args": {"prompt": "approve?"}}]}
WINDOW = 256


async def park(client: AgentMeshClient, count: int) -> None:
    await submit_many(client, "pipeline", SPEC, count, WINDOW)


async def waiting_count(client: AgentMeshClient) -> int:
    total, cursor = 0, ""
    while True:
        page = await client.list(state=pb.TASK_STATE_WAITING, limit=1000, cursor=cursor)
        total += len(page.tasks)
        if not page.next_cursor:
            return total
        cursor = page.next_cursor


async def settle(client: AgentMeshClient, expected: int) -> float:
    started = time.monotonic()
    while await waiting_count(client) < expected:
        if time.monotonic() - started > 600:
            raise RuntimeError("tasks did not park within 10 minutes")
        await asyncio.sleep(1.0)
    await asyncio.sleep(1.0)
    return time.monotonic() - started


async def run(mesh, counts: list[int]) -> list[dict]:  # type: ignore[no-untyped-def]
    pid = mesh.pid("coordinator")
    rows = []
    async with AgentMeshClient(mesh.coordinator_addr, TENANT_KEYS["alpha"], timeout_s=120) as client:
        await park(client, 500)  # warm up every code path and the allocator
        await settle(client, 500)
        base_kb, parked = rss_kb(pid), 500
        for target in counts:
            started = time.monotonic()
            await park(client, target - (parked - 500))
            await settle(client, target + 500)
            elapsed = time.monotonic() - started
            parked = target + 500
            gc.collect()
            now_kb = rss_kb(pid)
            rows.append(
                {
                    "waiting tasks": target,
                    "coordinator RSS MB": now_kb / 1024,
                    "baseline RSS MB": base_kb / 1024,
                    "bytes per waiting task": (now_kb - base_kb) * 1024 / target,
                    "park rate tasks/s": (target - (rows[-1]["waiting tasks"] if rows else 0)) / elapsed,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", default="10000,100000")
    opts = parser.parse_args()
    counts = [int(c) for c in opts.counts.split(",")]
    mesh = start_mesh(AGENTMESH_MAX_QUEUED="200000", AGENTMESH_DB_SYNCHRONOUS="NORMAL")
    try:
        rows = asyncio.run(run(mesh, counts))
    finally:
        mesh.stop()
    report(
        "memory",
        "coordinator RSS per task parked in approval (WAITING)",
        rows,
        {"target_bytes_per_task": 4096},
    )


if __name__ == "__main__":
    main()
