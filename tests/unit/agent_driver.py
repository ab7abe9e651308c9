"""Drives an agent's `decide` the way the coordinator does, over the planner's protocol: the memo
back, results named by action id, and for SDK agents the recorded journal when the planner asks for
it. Results are handed in by their action's key; every step answers what the test passes (for a
class agent: all of the last decision's results, as the coordinator hands them over)."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from agentmesh.sdk import AgentDefinition
from protos.agentmesh.v1 import common_pb2 as pb
from services.executor.tools import DECLARED, specs
from services.planner.durable import DurableAgent, DurableSettings, durable_agents
from services.planner.registry import Agent, DecideContext
from services.runtime.errors import HISTORY_REQUIRED, AgentMeshError

# What the coordinator hands in when the executor has every tool.
ALL_TOOLS = {spec.name: spec for spec in specs(set(DECLARED))}
TASK = "task1"


def planner_agent(agent: Agent | AgentDefinition, live_runs: int = 100) -> Agent:
    """The agent as the planner serves it: an SDK definition wrapped as the planner wraps it."""
    if isinstance(agent, AgentDefinition):
        return durable_agents({agent.name: agent}, DurableSettings(strict=True, live_runs=live_runs))[
            agent.name
        ]
    return agent


class AgentDriver:
    """`cold`: every decision of an SDK agent is replayed from the journal (a fresh worker each time)."""

    def __init__(
        self,
        agent: Agent | AgentDefinition,
        input: Any,  # noqa: A002
        tools: dict[str, pb.ToolSpec] | None = None,
        cold: bool = False,
    ) -> None:
        self.agent = planner_agent(agent, live_runs=0 if cold else 100)
        self.agent.validate(input)
        self.input = input
        self.tools = ALL_TOOLS if tools is None else tools
        self.memo: Any = None
        self.seq = 0
        self.decision = pb.Decision()
        self.open: dict[str, str] = {}  # key -> action id, of the actions not yet answered
        self.history: list[pb.RecordedDecision] = []

    def step(self, results: list[pb.ActionResult] = ()) -> pb.Decision:  # type: ignore[assignment]
        answered = []
        for result in results:
            result = copy.deepcopy(result)
            result.action_id = result.action_id or self.open.pop(result.key)
            answered.append(result)
        if self.history:  # the results settle the actions of earlier decisions, as recorded
            by_id = {r.action_id: r for r in answered}
            for record in self.history:
                for index, action in enumerate(record.decision.actions):
                    if action.id in by_id:
                        record.results[index].CopyFrom(by_id[action.id])
        self.seq += 1
        decision = self._decide(answered)
        for index, action in enumerate(decision.actions):
            action.id = f"{TASK}.{self.seq}.{index}"
            self.open[action.key] = action.id
        if not decision.nothing_new:
            decision.answered.extend(r.action_id for r in answered)  # as the coordinator records it
            placeholders = [pb.ActionResult(action_id=a.id, key=a.key) for a in decision.actions]
            self.history.append(pb.RecordedDecision(seq=self.seq, decision=decision, results=placeholders))
            self.memo = json.loads(decision.memo_json)
        else:
            self.seq -= 1
        self.decision = decision
        return decision

    def _decide(self, results: list[pb.ActionResult]) -> pb.Decision:
        def context(history: list[pb.RecordedDecision] | None) -> DecideContext:
            return DecideContext(
                TASK,
                copy.deepcopy(self.input),
                self.memo,
                list(results),
                self.seq,
                tools=self.tools,
                now=100.0 + self.seq,
                history=history,
            )

        if not isinstance(self.agent, DurableAgent):
            return self.agent.decide(context(None))  # type: ignore[return-value]
        try:
            return asyncio.run(self.agent.decide(context(None)))
        except AgentMeshError as exc:
            if exc.reason != HISTORY_REQUIRED:
                raise
            return asyncio.run(self.agent.decide(context(list(self.history))))

    def keys(self) -> list[str]:
        return [a.key for a in self.decision.actions]

    def error_details(self) -> dict[str, Any]:
        return json.loads(self.decision.final.error.details_json or "{}")
