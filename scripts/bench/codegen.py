#!/usr/bin/env python3
"""The codegen agent end to end on the example problems (examples/codegen/problems.json), with the
embedded SmolLM2 on this machine's CPU.

Two measurements, one problem at a time so the wall times are the problem's own:
- pass rate: `candidates` 4, up to 3 attempts (test feedback between them), scan on: outcome,
  attempts, tokens, cost and wall time per problem.
- batching: one attempt with 1 candidate vs with 4 candidates, alternating, same problem: how much
  more 4 candidates cost in wall time (they batch on the inference worker and test in parallel
  sandboxes; 4x would mean no batching at all).

    .venv/bin/python scripts/bench/codegen.py [--problems add,factorial] [--max-tokens 256]
        [--no-prefix-caching] [--blas-threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from _common import ROOT, report, start_mesh

from agentmesh.client import AgentMeshClient
from agentmesh.local import TENANT_KEYS
from protos.agentmesh.v1 import common_pb2 as pb


async def solve(client: AgentMeshClient, problem: dict[str, Any], **options: Any) -> pb.Task:
    spec = {
        "spec": problem["spec"],
        "tests": problem["tests"],
        "entrypoint": problem["entrypoint"],
        **options,
    }
    task = await client.submit("codegen", spec)
    return await client.wait(task.id)


def wall(task: pb.Task) -> float:
    return task.finished_at - task.created_at


async def measure(address: str, problems: list[dict[str, Any]], max_tokens: int) -> tuple[list, list]:
    outcomes, batching = [], []
    async with AgentMeshClient(address, TENANT_KEYS["alpha"]) as client:
        for problem in problems:
            done = await solve(client, problem, candidates=4, max_attempts=3, max_tokens=max_tokens)
            result = json.loads(done.result_json or "{}")
            outcomes.append(
                {
                    "problem": problem["name"],
                    "passed": bool(result.get("passed")),
                    "attempts": result.get("attempts", 0),
                    "tokens in": done.cost.tokens_in,
                    "tokens out": done.cost.tokens_out,
                    "usd": done.cost.usd,
                    "wall s": wall(done),
                }
            )
            one = await solve(
                client, problem, candidates=1, max_attempts=1, max_tokens=max_tokens, scan=False
            )
            four = await solve(
                client, problem, candidates=4, max_attempts=1, max_tokens=max_tokens, scan=False
            )
            batching.append(
                {
                    "problem": problem["name"],
                    "1 candidate s": wall(one),
                    "4 candidates s": wall(four),
                    "ratio": wall(four) / wall(one),
                    "tokens out 1": one.cost.tokens_out,
                    "tokens out 4": four.cost.tokens_out,
                }
            )
    return outcomes, batching


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", default="", help="comma-separated names (default: all)")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument(
        "--no-prefix-caching", action="store_true", help="the inference worker computes every prompt in full"
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=0,
        help="the inference worker's BLAS and kernel threads (0: its default)",
    )
    opts = parser.parse_args()
    problems = json.loads((ROOT / "examples" / "codegen" / "problems.json").read_text())
    if opts.problems:
        wanted = set(opts.problems.split(","))
        problems = [p for p in problems if p["name"] in wanted]
    mesh = start_mesh(
        AGENTMESH_GENERATE_MODEL="default",
        AGENTMESH_PREFIX_CACHING="false" if opts.no_prefix_caching else "true",
        AGENTMESH_BLAS_THREADS=str(opts.blas_threads),
    )
    try:
        outcomes, batching = asyncio.run(measure(mesh.coordinator_addr, problems, opts.max_tokens))
    finally:
        mesh.stop()
    passed = sum(1 for o in outcomes if o["passed"])
    report(
        "codegen",
        f"codegen on {len(problems)} problems: {passed} passed (4 candidates, up to 3 attempts)",
        outcomes,
        {
            "passed": passed,
            "problems": len(problems),
            "batching": batching,
            "prefix_caching": not opts.no_prefix_caching,
            "blas_threads": opts.blas_threads,
        },
    )
    report("codegen_batching", "one attempt: 1 vs 4 candidates (wall time of the task)", batching)


if __name__ == "__main__":
    main()
