#!/usr/bin/env python3
"""Decisions as each action settles, against decisions per wave.

Two chains of `sleep` steps side by side, whose step durations alternate (chain A: 0.4, 0.1, 0.4,
0.1 s; chain B the opposite), through a real mesh:

- per wave: a low-level class-API agent (`bench-chains-waves`) that asks for step i of both chains
  and decides again once both are done: step i+1 of either chain starts only once step i of both
  has ended, so the task takes the sum of each wave's longest step (1.6 s of sleep). This is how
  every agent was driven before decisions could be taken as each action settles.
- as each settles, pipeline: the built-in `pipeline` agent, each step depending on the one before
  it in its chain.
- as each settles, SDK: the same chains as an SDK agent (`ctx.gather` of two coroutines).
  In both, each step starts as soon as the one before it in its own chain has ended: the task
  takes its longest chain (1.0 s of sleep).

Alternating rounds, medians. Wall time from submit to SUCCEEDED, and the decisions each recorded.

    .venv/bin/python scripts/bench/settle.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from _common import report, start_mesh

from agentmesh.client import AgentMeshClient
from agentmesh.local import TENANT_KEYS
from protos.agentmesh.v1 import common_pb2 as pb

AGENTS = str(Path(__file__).with_name("sdk_agents.py"))
CHAINS = [[0.4, 0.1, 0.4, 0.1], [0.1, 0.4, 0.1, 0.4]]


def pipeline_spec() -> dict:
    steps = []
    for c, durations in enumerate(CHAINS):
        for i, seconds in enumerate(durations):
            step = {"id": f"c{c}s{i}", "tool": "shell", "args": {"command": f"sleep {seconds}"}}
            if i:
                step["depends_on"] = [f"c{c}s{i - 1}"]
            steps.append(step)
    return {"steps": steps}


async def one(address: str, agent: str, body: dict) -> tuple[float, int]:
    async with AgentMeshClient(address, TENANT_KEYS["alpha"], timeout_s=120) as client:
        started = time.perf_counter()
        task = await client.submit(agent, body)
        while task.state not in (pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELLED):
            await asyncio.sleep(0.005)
            task = await client.get(task.id)
        elapsed = time.perf_counter() - started
        assert task.state == pb.TASK_STATE_SUCCEEDED, task.error
        return elapsed, task.decisions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    variants = {
        "per wave (class API)": ("bench-chains-waves", {"chains": CHAINS}),
        "as each settles: pipeline": ("pipeline", pipeline_spec()),
        "as each settles: SDK": ("bench-chains", {"chains": CHAINS}),
    }
    mesh = start_mesh(AGENTMESH_AGENTS=AGENTS)
    times: dict[str, list[float]] = {name: [] for name in variants}
    decisions: dict[str, int] = {}
    try:
        for agent, body in variants.values():  # warm every path
            asyncio.run(one(mesh.coordinator_addr, agent, body))
        for _ in range(opts.rounds):
            for name, (agent, body) in variants.items():
                elapsed, decisions[name] = asyncio.run(one(mesh.coordinator_addr, agent, body))
                times[name].append(elapsed)
    finally:
        mesh.stop()
    waves = sum(max(step) for step in zip(*CHAINS, strict=True))
    longest = max(sum(c) for c in CHAINS)
    base = statistics.median(times["per wave (class API)"])
    rows = [
        {
            "decisions": name,
            "wall s": statistics.median(times[name]),
            "sleep on its path s": waves if "wave" in name else longest,
            "recorded decisions": decisions[name],
            "vs per wave": statistics.median(times[name]) / base,
        }
        for name in variants
    ]
    report("settle", "Two chains of alternating steps: per wave vs as each settles", rows, {"chains": CHAINS})


if __name__ == "__main__":
    main()
