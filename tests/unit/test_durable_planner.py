"""The planner's side of SDK agents (services/planner/durable.py): live runs, HISTORY_REQUIRED,
version pinning, and agent code that blocks."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from agentmesh.sdk import Context, agent
from protos.agentmesh.v1 import common_pb2 as pb
from services.planner.durable import DurableSettings, durable_agents
from services.planner.registry import DecideContext
from services.runtime.errors import FailedPrecondition, Unavailable


@agent(name="count", version="2")
async def count(ctx: Context, inp: dict) -> dict:
    total = 0
    for i in range(inp["n"]):
        total += (await ctx.exec("echo", i=i)).output["i"]
    return {"total": total}


@agent(name="spin", version="1")
async def spin(ctx: Context, inp: dict) -> dict:
    until = time.perf_counter() + inp["seconds"]
    while time.perf_counter() < until:
        pass
    return {}


def context(task: str, seq: int, results: list[pb.ActionResult], memo=None, history=None, n: int = 3):  # type: ignore[no-untyped-def]
    return DecideContext(task, {"n": n, "seconds": 1.0}, memo, results, seq, now=10.0 + seq, history=history)


def answer(decision: pb.Decision, seq: int) -> list[pb.ActionResult]:
    results = []
    for index, action in enumerate(decision.actions):
        action.id = f"t.{seq}.{index}"
        results.append(
            pb.ActionResult(
                action_id=action.id, status=pb.ACTION_STATUS_OK, output_json=action.exec.args_json
            )
        )
    return results


async def drive(agent_, task: str, cold_from: int = 0) -> tuple[pb.Decision, list[pb.RecordedDecision]]:  # type: ignore[no-untyped-def]
    """Decide until the end; from decision `cold_from` on, the live run is dropped before each call."""
    history: list[pb.RecordedDecision] = []
    results: list[pb.ActionResult] = []
    memo = None
    for seq in range(1, 100):
        if cold_from and seq >= cold_from:
            agent_.runs.take(task, None)
            with pytest.raises(FailedPrecondition) as refused:
                await agent_.decide(context(task, seq, results, memo))
            assert refused.value.reason == "HISTORY_REQUIRED"
            decision = await agent_.decide(context(task, seq, results, memo, history=list(history)))
        else:
            decision = await agent_.decide(context(task, seq, results, memo))
        assert decision.handles_cancel and decision.on_each_settle
        assert all(a.fingerprint for a in decision.actions)
        if decision.HasField("final"):
            return decision, history
        decision.answered.extend(r.action_id for r in results)  # as the coordinator records it
        results = answer(decision, seq)
        memo = json.loads(decision.memo_json)
        history.append(pb.RecordedDecision(seq=seq, decision=decision, results=results))
    raise AssertionError("no end")


def test_a_cold_planner_replays_from_the_history_to_the_same_decisions() -> None:
    agents = durable_agents({"count": count}, DurableSettings())
    warm, warm_history = asyncio.run(drive(agents["count"], "a"))
    cold, cold_history = asyncio.run(drive(agents["count"], "b", cold_from=2))
    assert json.loads(warm.final.result_json) == json.loads(cold.final.result_json) == {"total": 3}
    fingerprints = [[a.fingerprint for a in r.decision.actions] for r in warm_history]
    assert fingerprints == [[a.fingerprint for a in r.decision.actions] for r in cold_history]


def test_a_task_is_only_decided_by_the_version_it_started_on() -> None:
    agents = durable_agents({"count": count}, DurableSettings())
    memo = {"sdk": 1, "agent": "count", "version": "1", "now": 1.0, "issued": 1, "patches": []}
    with pytest.raises(Unavailable) as refused:
        asyncio.run(agents["count"].decide(context("c", 2, [], memo)))
    assert refused.value.reason == "AGENT_VERSION_UNAVAILABLE" and refused.value.retryable


def test_blocking_code_fails_its_task_but_not_the_tasks_queued_behind_it() -> None:
    agents = durable_agents({"count": count, "spin": spin}, DurableSettings(step_timeout_s=0.4, threads=1))

    async def go() -> tuple[pb.Decision, pb.Decision]:
        blocked = asyncio.ensure_future(agents["spin"].decide(context("s", 1, [])))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(agents["count"].decide(context("q", 1, [])))  # waits for the thread
        return await blocked, await queued

    blocked, queued = asyncio.run(go())
    assert blocked.final.error.reason == "AGENT_BLOCKED"
    assert "in spin" in json.loads(blocked.final.error.details_json)["traceback"]
    assert [a.exec.tool for a in queued.actions] == ["echo"]  # ran once the thread was free


def test_a_first_decision_takes_the_pin_the_coordinator_names() -> None:
    agents = durable_agents({"count": count}, DurableSettings())
    ctx = DecideContext("p", {"n": 1}, None, [], 1, now=1.0, agent_version="1")
    with pytest.raises(Unavailable) as refused:
        asyncio.run(agents["count"].decide(ctx))
    assert refused.value.reason == "AGENT_VERSION_UNAVAILABLE"


def test_a_live_run_that_answered_a_decision_not_recorded_is_replayed_not_reused() -> None:
    """Two workers asked for the same decision (the first one's answer was lost): the recorded
    memo is the other one's, so this worker's live run (advanced with its own clock) is stale."""
    agents = durable_agents({"count": count}, DurableSettings())
    live = agents["count"]

    async def go() -> None:
        first = await live.decide(context("m", 1, []))
        recorded = json.loads(first.memo_json) | {"now": 99.0}  # another worker's answer, later
        with pytest.raises(FailedPrecondition) as refused:
            await live.decide(context("m", 2, answer(first, 1), memo=recorded))
        assert refused.value.reason == "HISTORY_REQUIRED"

    asyncio.run(go())
