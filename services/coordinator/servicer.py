"""AgentService over gRPC: translates protobuf to calls on the core, and nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from protos.agentmesh.v1 import agent_service_pb2 as api
from protos.agentmesh.v1 import agent_service_pb2_grpc as api_grpc
from protos.agentmesh.v1 import common_pb2 as pb
from protos.agentmesh.v1 import inference_pb2
from services.coordinator.access import Access, info_of
from services.coordinator.auth import Caller
from services.coordinator.core import TaskManager
from services.runtime.errors import PermissionDenied
from services.runtime.mesh_keys import MeshKey


def authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value
    return None


class AgentServicer(api_grpc.AgentServiceServicer):
    def __init__(self, manager: TaskManager, access: Access) -> None:
        self.manager = manager
        self.access = access

    async def _caller(self, context: grpc.aio.ServicerContext) -> Caller:
        return await self.access.caller(authorization(context))

    async def _tenant(self, context: grpc.aio.ServicerContext) -> str:
        return (await self._caller(context)).tenant

    async def SubmitTask(self, request: api.SubmitTaskRequest, context: grpc.aio.ServicerContext) -> pb.Task:
        return await self.manager.submit(
            await self._tenant(context),
            request.agent,
            request.input_json,
            priority=request.priority,
            budget=request.budget,
            deadline_s=request.deadline_s,
            idempotency_key=request.idempotency_key,
            labels=dict(request.labels),
        )

    async def GetTask(self, request: api.GetTaskRequest, context: grpc.aio.ServicerContext) -> pb.Task:
        return await self.manager.get(await self._tenant(context), request.id)

    async def GetTaskJournal(
        self, request: api.GetTaskJournalRequest, context: grpc.aio.ServicerContext
    ) -> api.TaskJournal:
        return await self.manager.journal(await self._tenant(context), request.id)

    async def ListTasks(
        self, request: api.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> api.ListTasksResponse:
        tasks, cursor = await self.manager.list(
            await self._tenant(context), request.state, request.limit, request.cursor
        )
        return api.ListTasksResponse(tasks=tasks, next_cursor=cursor)

    async def CancelTask(self, request: api.CancelTaskRequest, context: grpc.aio.ServicerContext) -> pb.Task:
        caller = await self._caller(context)
        return await self.manager.cancel(caller.tenant, request.id, request.reason, caller=caller)

    async def SendInput(
        self, request: api.SendInputRequest, context: grpc.aio.ServicerContext
    ) -> api.SendInputResponse:
        caller = await self._caller(context)
        delivered, task = await self.manager.send_input(
            caller.tenant, request.id, request.data_json, caller=caller
        )
        return api.SendInputResponse(delivered=delivered, task=task)

    async def WatchTask(
        self, request: api.WatchTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Event]:
        async for event in self.manager.watch(await self._tenant(context), request.id, request.after_seq):
            yield event

    async def ResolveTask(
        self, request: api.ResolveTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.Task:
        caller = await self._caller(context)
        return await self.manager.resolve(
            caller.tenant, request.id, request.action, request.version, request.to_decision, caller=caller
        )

    async def GetTaskTimeline(
        self, request: api.GetTaskTimelineRequest, context: grpc.aio.ServicerContext
    ) -> api.TaskTimeline:
        return await self.manager.timeline(await self._tenant(context), request.id)

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ListModelsResponse:
        await self._caller(context)
        return inference_pb2.ListModelsResponse(models=await self.manager.list_models())

    async def ListAgents(
        self, request: api.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> api.ListAgentsResponse:
        await self._caller(context)
        return api.ListAgentsResponse(agents=await self.manager.list_agents())


class AdminServicer(api_grpc.AdminServicer):
    """API keys and the audit log, for the operator who holds the mesh's admin key."""

    def __init__(self, access: Access, admin_key: MeshKey) -> None:
        self.access = access
        self.admin_key = admin_key

    def _check(self, context: grpc.aio.ServicerContext) -> None:
        presented = authorization(context)
        if self.access.ring.is_known(presented):
            raise PermissionDenied(
                "a tenant's API key cannot manage keys: use the mesh's admin key", reason="NOT_ADMIN"
            )
        self.admin_key.check(presented)

    async def CreateKey(
        self, request: api.CreateKeyRequest, context: grpc.aio.ServicerContext
    ) -> api.CreateKeyResponse:
        self._check(context)
        entry, secret = await self.access.create(request.tenant, request.label, request.expires_in_s)
        return api.CreateKeyResponse(key=info_of(entry), secret=secret)

    async def ListKeys(
        self, request: api.ListKeysRequest, context: grpc.aio.ServicerContext
    ) -> api.ListKeysResponse:
        self._check(context)
        await self.access.refresh()
        return api.ListKeysResponse(
            keys=[info_of(e) for e in self.access.list(request.tenant, request.include_revoked)]
        )

    async def RevokeKey(
        self, request: api.RevokeKeyRequest, context: grpc.aio.ServicerContext
    ) -> api.ApiKeyInfo:
        self._check(context)
        return info_of(await self.access.revoke(request.id))

    async def ListAudit(
        self, request: api.ListAuditRequest, context: grpc.aio.ServicerContext
    ) -> api.ListAuditResponse:
        self._check(context)
        entries = await self.access.audit_log(request.tenant, request.limit, request.before)
        return api.ListAuditResponse(entries=entries)
