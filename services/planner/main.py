"""`agentmesh serve planner`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from agentmesh.sdk import AgentDefinition, strict
from agentmesh.sdk.loader import load_agents as load_sdk_agents
from protos.agentmesh.v1 import planner_pb2, planner_pb2_grpc
from services.planner.durable import DurableSettings, durable_agents
from services.planner.registry import Agent, load_agents
from services.planner.servicer import PlannerServicer
from services.runtime import config as config_mod
from services.runtime import server
from services.runtime.config import CommonConfig, setting
from services.runtime.server import Runtime, Service

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannerConfig(CommonConfig):
    listen: str = setting("", "address to listen on (default: planner_addr)")
    agents: str = setting(
        "", "SDK agents to serve beside the built-in ones: module paths or .py files, comma-separated"
    )
    strict: bool = setting(False, "stop SDK agent code that reads the clock, random, sockets ... directly")
    live_runs: int = setting(
        10_000, "SDK tasks whose agent coroutines stay in memory between decisions (0: replay each time)"
    )
    step_timeout_s: float = setting(5.0, "how long SDK agent code may run without yielding")


class PlannerService(Service):
    name = "planner"

    def __init__(self, config: PlannerConfig) -> None:
        self.config = config

    # The mesh's planner serves the built-in agents beside the user's; an agent worker only these.
    builtin = True

    async def setup(self, rt: Runtime) -> None:
        self.agents = agents = self._load()
        planner_pb2_grpc.add_PlannerServicer_to_server(PlannerServicer(agents), rt.server)
        rt.add_service_name(planner_pb2.DESCRIPTOR.services_by_name["Planner"].full_name)
        log.info("agents: %s", ", ".join(sorted(agents)))

    def _load(self) -> dict[str, Agent]:
        if self.config.strict:
            strict.install()  # before the agents' modules bind time, random ...
        loaded: dict[str, Any] = dict(load_agents()) if self.builtin else {}
        if self.config.agents:
            loaded.update(load_sdk_agents(self.config.agents))
        sdk = {name: a for name, a in loaded.items() if isinstance(a, AgentDefinition)}
        settings = DurableSettings(
            strict=self.config.strict,
            live_runs=self.config.live_runs,
            step_timeout_s=self.config.step_timeout_s,
        )
        agents: dict[str, Agent] = {name: a for name, a in loaded.items() if name not in sdk}
        # One pool of agent threads and one bounded set of live runs for all SDK agents served here.
        agents.update(durable_agents(sdk, settings))
        return agents


def main(argv: list[str]) -> int:
    config = config_mod.load(PlannerConfig, argv, prog="agentmesh serve planner")
    return server.run(PlannerService(config), config, config.listen or config.planner_addr)
