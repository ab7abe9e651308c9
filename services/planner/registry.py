"""Agents: the built-in ones, those found through the `agentmesh.agents` entry-point group, and
SDK agents (`agentmesh.sdk.agent`) loaded from the modules or files the planner is told of.

An entry point names an SDK agent (an `@agent` function) or a low-level agent class. The low-level
agent has `name`, `description`, `validate(input) -> None` (raise InvalidArgument) and
`decide(DecideContext) -> Decision` (or an awaitable of one). It keeps nothing between calls:
everything it needs comes in the request (input, memo, the previous decision's results). SDK agents
sit on the same protocol (services/planner/durable.py).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

from agentmesh.sdk.definition import AgentDefinition
from protos.agentmesh.v1 import common_pb2 as pb
from services.runtime.errors import InvalidArgument

log = logging.getLogger(__name__)

GROUP = "agentmesh.agents"
# The agents that ship with agentmesh (also declared as entry points in pyproject.toml).
BUILTIN = {
    "pipeline": "services.planner.agents.pipeline:PipelineAgent",
    "codegen": "services.planner.agents.codegen:codegen",
    "react": "services.planner.agents.react:react",
}


@dataclass(frozen=True)
class DecideContext:
    task_id: str
    input: Any
    memo: Any
    results: list[pb.ActionResult]
    decision_seq: int
    # The executor's tools as it declares them (name -> spec); empty when the coordinator could not
    # read them.
    tools: dict[str, pb.ToolSpec] = field(default_factory=dict)
    # The coordinator's clock at the call (SDK agents read it as ctx.now()).
    now: float = 0.0
    # The task's recorded decisions, when the coordinator sent them (pb.RecordedDecision).
    history: list[Any] | None = None
    # The task is being cancelled (agents whose decisions say handles_cancel are asked to clean up).
    cancelling: bool = False
    # The agent version the coordinator pinned the task to ("": none named).
    agent_version: str = ""


class Agent(Protocol):
    name: str
    description: str

    def validate(self, input: Any) -> None: ...  # noqa: A002

    def decide(self, ctx: DecideContext) -> pb.Decision | Awaitable[pb.Decision]: ...


def refuse_input(what: str, violations: list[tuple[str, str]], shown: int = 10) -> None:
    """Raise INVALID_ARGUMENT naming each bad field (the first `shown` in the message, all in the
    details), if there are any."""
    if violations:
        raise InvalidArgument(
            f"invalid {what}: " + "; ".join(f"{f}: {d}" for f, d in violations[:shown]),
            field_violations=violations,
        )


def load_agents() -> dict[str, Agent | AgentDefinition]:
    """name -> a low-level agent, or an SDK agent's definition (for the planner to wrap)."""
    agents: dict[str, Agent | AgentDefinition] = {}
    for ep in entry_points(group=GROUP):
        try:
            agents[ep.name] = _instance(ep.load())
        except Exception:  # noqa: BLE001 - one broken plug-in must not stop the planner
            log.exception("cannot load agent %s from %s", ep.name, ep.value)
    for name, target in BUILTIN.items():  # a source tree without the entry points installed
        if name not in agents:
            module, _, attr = target.partition(":")
            agents[name] = _instance(getattr(importlib.import_module(module), attr))
    return agents


def _instance(loaded: Any) -> Agent | AgentDefinition:
    return loaded if isinstance(loaded, AgentDefinition) else loaded()


def get_agent(agents: dict[str, Agent], name: str) -> Agent:
    agent = agents.get(name)
    if agent is None:
        raise InvalidArgument(
            f"unknown agent {name!r}; known: {', '.join(sorted(agents))}",
            reason="UNKNOWN_AGENT",
            field_violations=[("agent", "unknown agent")],
        )
    return agent
