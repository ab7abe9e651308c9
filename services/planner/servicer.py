"""Planner over gRPC: decode JSON, call the agent, encode its decision."""

from __future__ import annotations

import inspect
import json
from typing import Any

import grpc

from protos.agentmesh.v1 import agent_service_pb2 as api
from protos.agentmesh.v1 import common_pb2 as pb
from protos.agentmesh.v1 import planner_pb2, planner_pb2_grpc
from services.planner.registry import Agent, DecideContext, get_agent
from services.runtime.errors import InvalidArgument


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text) if text else None
    except RecursionError:
        raise InvalidArgument(f"{what} is nested too deeply", reason="JSON_TOO_DEEP") from None
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}", reason="MALFORMED_JSON") from None


class PlannerServicer(planner_pb2_grpc.PlannerServicer):
    def __init__(self, agents: dict[str, Agent]) -> None:
        self.agents = agents

    async def Decide(
        self, request: planner_pb2.DecideRequest, context: grpc.aio.ServicerContext
    ) -> pb.Decision:
        agent = get_agent(self.agents, request.agent)
        ctx = DecideContext(
            task_id=request.task_id,
            input=_json(request.input_json, "input"),
            memo=_json(request.memo_json, "memo"),
            results=list(request.results),
            decision_seq=request.decision_seq,
            tools={spec.name: spec for spec in request.tools},
            now=request.now,
            history=list(request.history) if request.history_included else None,
            cancelling=request.cancelling,
            agent_version=request.agent_version,
        )
        decision = agent.decide(ctx)
        return await decision if inspect.isawaitable(decision) else decision

    async def Validate(
        self, request: planner_pb2.ValidateRequest, context: grpc.aio.ServicerContext
    ) -> planner_pb2.ValidateResponse:
        agent = get_agent(self.agents, request.agent)
        agent.validate(_json(request.input_json, "input"))
        return planner_pb2.ValidateResponse(version=getattr(agent, "version", ""))

    async def ListAgents(
        self, request: api.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> api.ListAgentsResponse:
        return api.ListAgentsResponse(agents=agent_infos(self.agents))


def agent_infos(agents: dict[str, Agent]) -> list[api.AgentInfo]:
    """What this planner serves, as it tells the coordinator."""
    return [
        api.AgentInfo(
            name=name,
            description=agent.description,
            version=getattr(agent, "version", ""),
            input_schema_json=_schema_json(agent),
        )
        for name, agent in sorted(agents.items())
    ]


def _schema_json(agent: Agent) -> str:
    schema = agent.input_schema() if hasattr(agent, "input_schema") else None
    return json.dumps(schema, sort_keys=True) if schema else ""
