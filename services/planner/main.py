"""`agentmesh serve planner`."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from protos.agentmesh.v1 import planner_pb2, planner_pb2_grpc
from services.planner.registry import load_agents
from services.planner.servicer import PlannerServicer
from services.runtime import config as config_mod
from services.runtime import server
from services.runtime.config import CommonConfig, setting
from services.runtime.server import Runtime, Service

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannerConfig(CommonConfig):
    listen: str = setting("", "address to listen on (default: planner_addr)")


class PlannerService(Service):
    name = "planner"

    async def setup(self, rt: Runtime) -> None:
        agents = load_agents()
        planner_pb2_grpc.add_PlannerServicer_to_server(PlannerServicer(agents), rt.server)
        rt.add_service_name(planner_pb2.DESCRIPTOR.services_by_name["Planner"].full_name)
        log.info("agents: %s", ", ".join(sorted(agents)))


def main(argv: list[str]) -> int:
    config = config_mod.load(PlannerConfig, argv, prog="agentmesh serve planner")
    return server.run(PlannerService(), config, config.listen or config.planner_addr)
