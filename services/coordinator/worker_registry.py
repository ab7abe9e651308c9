"""AgentWorkers over gRPC: agent workers register the planner they serve (planners.py routes)."""

from __future__ import annotations

import grpc

from protos.agentmesh.v1 import planner_pb2, planner_pb2_grpc
from services.coordinator.planners import HEARTBEAT_S, LEASE_S, PlannerPool
from services.coordinator.servicer import authorization
from services.runtime.mesh_keys import MeshKey


class WorkerRegistryServicer(planner_pb2_grpc.AgentWorkersServicer):
    def __init__(self, pool: PlannerPool, key: MeshKey) -> None:
        self.pool = pool
        self.key = key

    async def Register(
        self, request: planner_pb2.RegisterWorkerRequest, context: grpc.aio.ServicerContext
    ) -> planner_pb2.RegisterWorkerResponse:
        self.key.check(authorization(context))
        self.pool.register(request.worker_id, request.address, list(request.agents))
        return planner_pb2.RegisterWorkerResponse(heartbeat_s=HEARTBEAT_S, lease_s=LEASE_S)

    async def Leave(
        self, request: planner_pb2.LeaveWorkerRequest, context: grpc.aio.ServicerContext
    ) -> planner_pb2.LeaveWorkerResponse:
        self.key.check(authorization(context))
        self.pool.leave(request.worker_id)
        return planner_pb2.LeaveWorkerResponse()
