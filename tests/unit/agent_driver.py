"""Drives an agent's `decide` the way the coordinator does: the memo back, and every result of the
last decision at once (the coordinator asks again only when a decision's actions are all done)."""

from __future__ import annotations

import copy
import json
from typing import Any

from protos.agentmesh.v1 import common_pb2 as pb
from services.executor.tools import DECLARED, specs
from services.planner.registry import Agent, DecideContext

# What the coordinator hands in when the executor has every tool.
ALL_TOOLS = {spec.name: spec for spec in specs(set(DECLARED))}


class AgentDriver:
    def __init__(self, agent: Agent, input: Any, tools: dict[str, pb.ToolSpec] | None = None) -> None:  # noqa: A002
        agent.validate(input)
        self.agent = agent
        self.input = input
        self.tools = ALL_TOOLS if tools is None else tools
        self.memo: Any = None
        self.seq = 0
        self.decision = pb.Decision()

    def step(self, results: list[pb.ActionResult] = ()) -> pb.Decision:  # type: ignore[assignment]
        self.seq += 1
        ctx = DecideContext(
            "task1", copy.deepcopy(self.input), self.memo, list(results), self.seq, tools=self.tools
        )
        self.decision = self.agent.decide(ctx)
        self.memo = json.loads(self.decision.memo_json)
        return self.decision

    def keys(self) -> list[str]:
        return [a.key for a in self.decision.actions]
