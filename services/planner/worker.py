"""`agentmesh worker`: a planner serving the user's own agents, registered with the coordinator.

It is the planner service with only `--agents` loaded (no built-ins), listening on a port of its
own (any free one by default) and announcing itself to the coordinator (AgentWorkers.Register):
its address and its agents with their versions and input schemas, again every heartbeat. The
coordinator routes those agents' decisions here (services/coordinator/planners.py). On SIGTERM it
leaves first, so no new decision is sent here, then finishes the ones in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc

from protos.agentmesh.v1 import planner_pb2, planner_pb2_grpc
from services.planner.main import PlannerConfig, PlannerService
from services.planner.servicer import agent_infos
from services.runtime import config as config_mod
from services.runtime import server
from services.runtime.channels import insecure_channel
from services.runtime.config import setting
from services.runtime.errors import InvalidArgument
from services.runtime.mesh_keys import WORKER_KEY_FILE_NAME
from services.runtime.server import Runtime

log = logging.getLogger(__name__)

REGISTER_TIMEOUT_S = 5.0
# While the coordinator cannot be reached, registering is tried again this often at most.
RETRY_MAX_S = 5.0


@dataclass(frozen=True)
class WorkerConfig(PlannerConfig):
    listen: str = setting("127.0.0.1:0", "address to listen on (port 0: any free port)")
    agents: str = setting("", "the agents it serves (required): module paths or .py files, comma-separated")
    advertise: str = setting(
        "", "host:port the coordinator reaches this worker at (default: the listen host, bound port)"
    )
    worker_id: str = setting("", "this worker's name (default: worker-HOST-PID-RANDOM)")
    worker_key: str = setting("", "the coordinator's worker key (default: read from DATA_DIR/worker.key)")
    coordinators: str = setting(
        "", "coordinators to register with, comma-separated (default: coordinator_addr); each routes here"
    )


def worker_key(config: WorkerConfig) -> str:
    if config.worker_key:
        return config.worker_key
    path = Path(config.data_dir) / WORKER_KEY_FILE_NAME
    try:
        return path.read_text().strip()
    except OSError:
        raise InvalidArgument(
            f"no worker key: pass --worker-key (AGENTMESH_WORKER_KEY), or run where {path} is "
            "(the coordinator makes it in its data dir)",
            reason="MISSING_WORKER_KEY",
        ) from None


def advertised(config: WorkerConfig, port: int) -> str:
    if config.advertise:
        return config.advertise
    host = config.listen.rsplit(":", 1)[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    return f"{host}:{port}"


class AgentWorkerService(PlannerService):
    name = "worker"
    builtin = False

    def __init__(self, config: WorkerConfig) -> None:
        super().__init__(config)
        self.worker_config = config
        self.key = worker_key(config)  # fail at start, not at the first heartbeat
        own = f"worker-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self.worker_id = config.worker_id or own
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._announcing: list[asyncio.Task[None]] = []

    async def warm(self, rt: Runtime) -> None:
        request = planner_pb2.RegisterWorkerRequest(
            worker_id=self.worker_id,
            address=advertised(self.worker_config, rt.port),
            agents=agent_infos(self.agents),
        )
        addresses = [a.strip() for a in self.worker_config.coordinators.split(",") if a.strip()]
        for address in addresses or [self.config.coordinator_addr]:
            channel = insecure_channel(address)
            self._channels[address] = channel
            stub = planner_pb2_grpc.AgentWorkersStub(channel)
            # One try before SERVING, so that a worker that reports ready is (usually) routed to.
            with contextlib.suppress(grpc.RpcError):
                await stub.Register(request, timeout=REGISTER_TIMEOUT_S, metadata=self._metadata())
            self._announcing.append(rt.spawn(self._announce(address, stub, request), f"register {address}"))

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.key}"),)

    async def _announce(
        self,
        address: str,
        stub: planner_pb2_grpc.AgentWorkersStub,
        request: planner_pb2.RegisterWorkerRequest,
    ) -> None:
        """Register, and again every heartbeat; while the coordinator is away, keep trying."""
        delay, registered = 0.2, False
        while True:
            try:
                reply = await stub.Register(request, timeout=REGISTER_TIMEOUT_S, metadata=self._metadata())
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    log.error("the coordinator refused this worker: %s", exc.details())
                elif registered:
                    log.warning("lost the coordinator at %s: %s", address, exc.code())
                registered = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if not registered:
                log.info(
                    "registered with the coordinator at %s as %s (%s)",
                    address,
                    self.worker_id,
                    request.address,
                )
            registered, delay = True, 0.2
            await asyncio.sleep(reply.heartbeat_s)

    async def drain(self) -> None:
        for task in self._announcing:
            task.cancel()  # a heartbeat after leaving would bring it back
        leave = planner_pb2.LeaveWorkerRequest(worker_id=self.worker_id)
        for address, channel in self._channels.items():
            try:
                await planner_pb2_grpc.AgentWorkersStub(channel).Leave(
                    leave, timeout=REGISTER_TIMEOUT_S, metadata=self._metadata()
                )
            except grpc.RpcError as exc:
                log.warning(
                    "could not tell the coordinator at %s this worker leaves: %s", address, exc.code()
                )

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(grace=None)


def main(argv: list[str]) -> int:
    config = config_mod.load(WorkerConfig, argv, prog="agentmesh worker")
    try:
        if not config.agents:
            raise InvalidArgument("an agent worker serves --agents: module paths or .py files")
        service = AgentWorkerService(config)
    except InvalidArgument as exc:
        print(f"agentmesh worker: {exc.message}", file=sys.stderr)
        return 2
    return server.run(service, config, config.listen)
