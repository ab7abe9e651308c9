#!/usr/bin/env python3
"""Submit -> first event and submit -> SUCCEEDED latency of a one-step (echo) task, p50/p99.

.venv/bin/python scripts/bench/latency.py [--samples 300]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _common import percentile, report, start_mesh

from agentmesh.client import AgentMeshClient
from agentmesh.local import TENANT_KEYS

SPEC = {"steps": [{"id": "e", "tool": "echo", "args": {"hello": "world"}}]}


async def measure(address: str, samples: int) -> tuple[list[float], list[float]]:
    first, done = [], []
    async with AgentMeshClient(address, TENANT_KEYS["alpha"]) as client:
        for i in range(samples + 20):
            started = time.perf_counter()
            task = await client.submit("pipeline", SPEC)
            seen_first = None
            async for _event in client.watch(task.id):
                if seen_first is None:
                    seen_first = time.perf_counter() - started
            finished = time.perf_counter() - started
            if i >= 20:  # warm-up
                first.append(seen_first * 1000)
                done.append(finished * 1000)
    return first, done


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=300)
    opts = parser.parse_args()
    mesh = start_mesh()
    try:
        first, done = asyncio.run(measure(mesh.coordinator_addr, opts.samples))
    finally:
        mesh.stop()
    rows = [
        {
            "metric": "submit -> first event (ms)",
            "p50": percentile(first, 50),
            "p99": percentile(first, 99),
            "max": max(first),
        },
        {
            "metric": "submit -> SUCCEEDED (ms)",
            "p50": percentile(done, 50),
            "p99": percentile(done, 99),
            "max": max(done),
        },
    ]
    report("latency", f"one-step task latency, {opts.samples} sequential tasks", rows)


if __name__ == "__main__":
    main()
