#!/usr/bin/env python3
"""The SDK's cost: decision overhead against the class API, replay against journal length, memory.

1. Through a real mesh (SQLite store), the same 1,000-action sequential agent written on the SDK
   (`bench-seq`) and by hand on the low-level class API (`bench-seq-class`): actions/s, alternating
   rounds, medians. Warm: the planner keeps each task's coroutine (the default). Cold: the planner
   keeps nothing (`--live-runs 0`), so every decision replays the task's whole journal.
2. In the planner's own code path (services/planner/durable.py, protobuf in and out, no network):
   the time of one warm decision at journal position 100, 1,000 and 10,000, and the time of a cold
   replay of a journal that long.
3. Memory of 10,000 parked SDK tasks (each waiting for input): RSS growth of the coordinator and of
   the planner, which keeps every one's coroutine live unless told to keep fewer.

    .venv/bin/python scripts/bench/sdk.py [--actions 1000 --rounds 3 --cold-actions 1000 --parked 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time
from pathlib import Path

from _common import report, rss_kb, start_mesh, submit_many

from agentmesh.client import AgentMeshClient
from agentmesh.local import TENANT_KEYS
from protos.agentmesh.v1 import common_pb2 as pb

AGENTS = str(Path(__file__).with_name("sdk_agents.py"))


async def _until_done(client: AgentMeshClient, task_id: str) -> pb.Task:
    while True:  # polling: a watcher of thousands of events would compete for the CPU
        task = await client.get(task_id)
        if task.state in (pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELLED):
            return task
        await asyncio.sleep(0.02)


async def rate(address: str, agent: str, actions: int) -> float:
    async with AgentMeshClient(address, TENANT_KEYS["alpha"], timeout_s=600) as client:
        started = time.perf_counter()
        task = await _until_done(client, (await client.submit(agent, {"n": actions})).id)
        elapsed = time.perf_counter() - started
        assert task.state == pb.TASK_STATE_SUCCEEDED, task.error
        assert json.loads(task.result_json) == {"total": actions * (actions - 1) // 2}
        return actions / elapsed


def mesh_rates(opts: argparse.Namespace) -> list[dict]:
    mesh = start_mesh(AGENTMESH_AGENTS=AGENTS)
    rows = []
    try:
        asyncio.run(rate(mesh.coordinator_addr, "bench-seq", 50))  # warm every path
        asyncio.run(rate(mesh.coordinator_addr, "bench-seq-class", 50))
        classic, warm = [], []
        for _ in range(opts.rounds):
            classic.append(asyncio.run(rate(mesh.coordinator_addr, "bench-seq-class", opts.actions)))
            warm.append(asyncio.run(rate(mesh.coordinator_addr, "bench-seq", opts.actions)))
        planner = mesh.children["planner"]
        planner.env["AGENTMESH_LIVE_RUNS"] = "0"
        mesh.kill9("planner")
        mesh.restart("planner")
        cold = asyncio.run(rate(mesh.coordinator_addr, "bench-seq", opts.cold_actions))
    finally:
        mesh.stop()
    base = statistics.median(classic)
    rows.append({"agent": f"class API, {opts.actions} actions", "actions/s": base, "vs class API": 1.0})
    rows.append(
        {
            "agent": f"SDK warm (live coroutine), {opts.actions} actions",
            "actions/s": statistics.median(warm),
            "vs class API": statistics.median(warm) / base,
        }
    )
    rows.append(
        {
            "agent": f"SDK cold (every decision replayed), {opts.cold_actions} actions",
            "actions/s": cold,
            "vs class API": cold / base,
        }
    )
    return rows


# ----------------------------------------------------------------------------- in-process decisions


def _decide_context(task_id: str, seq: int, results: list[pb.ActionResult], memo=None, history=None):  # type: ignore[no-untyped-def]
    from services.planner.registry import DecideContext

    return DecideContext(
        task_id=task_id,
        input={"n": 10**9},
        memo=memo,
        results=results,
        decision_seq=seq,
        now=1_000.0 + seq,
        history=history,
    )


def _echo_results(decision: pb.Decision, seq: int) -> list[pb.ActionResult]:
    out = []
    for index, action in enumerate(decision.actions):
        action.id = f"t.{seq}.{index}"
        out.append(
            pb.ActionResult(
                action_id=action.id,
                key=action.key,
                status=pb.ACTION_STATUS_OK,
                output_json=action.exec.args_json,
                cost=pb.Cost(wall_ms=0.01),
            )
        )
    return out


async def planner_path(lengths: list[int]) -> list[dict]:
    import sdk_agents

    from services.planner.durable import DurableSettings, durable_agents

    agents = durable_agents({"bench-seq": sdk_agents.seq}, DurableSettings(step_timeout_s=600))
    agent = agents["bench-seq"]
    rows = []
    history: list[pb.RecordedDecision] = []
    results: list[pb.ActionResult] = []
    memo = None
    per_decision: dict[int, float] = {}
    seq = 0
    window = 50
    for target in lengths:
        started = None
        while seq < target:
            seq += 1
            if seq == target - window + 1:
                started = time.perf_counter()
            decision = await agent.decide(_decide_context("t", seq, results, memo))
            decision.answered.extend(r.action_id for r in results)  # as the coordinator records it
            memo = json.loads(decision.memo_json)
            results = _echo_results(decision, seq)
            history.append(pb.RecordedDecision(seq=seq, decision=decision, results=results))
        assert started is not None
        per_decision[target] = (time.perf_counter() - started) / window
    for target in lengths:
        # A cold planner: the journal up to `target` replayed, then the next decision taken.
        cold = durable_agents({"bench-seq": sdk_agents.seq}, DurableSettings(step_timeout_s=600))["bench-seq"]
        gc.collect()
        started = time.perf_counter()
        await cold.decide(
            _decide_context("t", target + 1, list(history[target - 1].results), history=history[:target])
        )
        replay_s = time.perf_counter() - started
        rows.append(
            {
                "journal length": target,
                "warm decision us": per_decision[target] * 1e6,
                "cold replay ms": replay_s * 1e3,
                "cold replay us per action": replay_s / target * 1e6,
            }
        )
    return rows


# ----------------------------------------------------------------------------- memory


async def _park(address: str, count: int) -> None:
    async with AgentMeshClient(address, TENANT_KEYS["alpha"], timeout_s=120) as client:
        await submit_many(client, "bench-park", {}, count, 256)
        started = time.monotonic()
        while True:
            waiting, cursor = 0, ""
            while True:
                page = await client.list(state=pb.TASK_STATE_WAITING, limit=1000, cursor=cursor)
                waiting += len(page.tasks)
                cursor = page.next_cursor
                if not cursor:
                    break
            if waiting >= count:
                return
            if time.monotonic() - started > 600:
                raise RuntimeError("tasks did not park within 10 minutes")
            await asyncio.sleep(1.0)


def memory(opts: argparse.Namespace) -> list[dict]:
    mesh = start_mesh(AGENTMESH_AGENTS=AGENTS, AGENTMESH_MAX_QUEUED=str(opts.parked + 1000))
    rows = []
    try:
        asyncio.run(_park(mesh.coordinator_addr, 300))  # warm every path and the allocator
        before = {name: rss_kb(mesh.pid(name)) for name in ("coordinator", "planner")}
        started = time.monotonic()
        asyncio.run(_park(mesh.coordinator_addr, opts.parked + 300))
        elapsed = time.monotonic() - started
        time.sleep(1.0)
        for name in ("coordinator", "planner"):
            after = rss_kb(mesh.pid(name))
            rows.append(
                {
                    "process": name,
                    "parked SDK tasks": opts.parked,
                    "RSS before MB": before[name] / 1024,
                    "RSS after MB": after / 1024,
                    "bytes per parked task": (after - before[name]) * 1024 / opts.parked,
                    "park rate tasks/s": opts.parked / elapsed,
                }
            )
    finally:
        mesh.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--actions", type=int, default=1000)
    parser.add_argument("--cold-actions", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lengths", default="100,1000,10000")
    parser.add_argument("--parked", type=int, default=10_000)
    opts = parser.parse_args()
    mesh_rows = mesh_rates(opts)
    path_rows = asyncio.run(planner_path([int(n) for n in opts.lengths.split(",")]))
    memory_rows = memory(opts)
    report("sdk", "a sequential agent through the mesh: SDK vs class API", mesh_rows)
    report("sdk-replay", "one decision in the planner's code path, by journal length", path_rows)
    report(
        "sdk-memory",
        f"{opts.parked} parked SDK tasks",
        memory_rows,
        {"mesh": mesh_rows, "planner_path": path_rows},
    )


if __name__ == "__main__":
    main()
