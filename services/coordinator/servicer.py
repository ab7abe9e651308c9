"""AgentService over gRPC: translates protobuf to calls on the core, and nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from protos.agentmesh.v1 import agent_service_pb2 as api
from protos.agentmesh.v1 import agent_service_pb2_grpc as api_grpc
from protos.agentmesh.v1 import common_pb2 as pb
from services.coordinator.auth import KeyRing
from services.coordinator.core import TaskManager


def authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value
    return None


class AgentServicer(api_grpc.AgentServiceServicer):
    def __init__(self, manager: TaskManager, keys: KeyRing) -> None:
        self.manager = manager
        self.keys = keys

    def _tenant(self, context: grpc.aio.ServicerContext) -> str:
        return self.keys.tenant_for(authorization(context))

    async def SubmitTask(self, request: api.SubmitTaskRequest, context: grpc.aio.ServicerContext) -> pb.Task:
        return await self.manager.submit(
            self._tenant(context),
            request.agent,
            request.input_json,
            priority=request.priority,
            budget=request.budget,
            deadline_s=request.deadline_s,
            idempotency_key=request.idempotency_key,
            labels=dict(request.labels),
        )

    async def GetTask(self, request: api.GetTaskRequest, context: grpc.aio.ServicerContext) -> pb.Task:
        return await self.manager.get(self._tenant(context), request.id)

    async def GetTaskJournal(
        self, request: api.GetTaskJournalRequest, context: grpc.aio.ServicerContext
    ) -> api.TaskJournal:
        return await self.manager.journal(self._tenant(context), request.id)

    async def ListTasks(
        self, request: api.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> api.ListTasksResponse:
        tasks, cursor = await self.manager.list(
            self._tenant(context), request.state, request.limit, request.cursor
        )
        return api.ListTasksResponse(tasks=tasks, next_cursor=cursor)

    async def CancelTask(self, request: api.CancelTaskRequest, context: grpc.aio.ServicerContext) -> pb.Task:
        return await self.manager.cancel(self._tenant(context), request.id, request.reason)

    async def SendInput(
        self, request: api.SendInputRequest, context: grpc.aio.ServicerContext
    ) -> api.SendInputResponse:
        delivered, task = await self.manager.send_input(self._tenant(context), request.id, request.data_json)
        return api.SendInputResponse(delivered=delivered, task=task)

    async def WatchTask(
        self, request: api.WatchTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Event]:
        async for event in self.manager.watch(self._tenant(context), request.id, request.after_seq):
            yield event

    async def ResolveTask(
        self, request: api.ResolveTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.Task:
        return await self.manager.resolve(
            self._tenant(context), request.id, request.action, request.version, request.to_decision
        )

    async def ListAgents(
        self, request: api.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> api.ListAgentsResponse:
        self._tenant(context)
        return api.ListAgentsResponse(agents=await self.manager.list_agents())
