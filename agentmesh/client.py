"""A small async client for `agentmesh.v1.AgentService`; the CLI, the gateway and the tests use it.

Errors come back as the server raised them (`services.runtime.errors` classes), rebuilt from the
`google.rpc.Status` details, so callers catch `NotFound` rather than parse status codes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc

from protos.agentmesh.v1 import agent_service_pb2 as api
from protos.agentmesh.v1 import agent_service_pb2_grpc as api_grpc
from protos.agentmesh.v1 import common_pb2
from services.runtime.channels import insecure_channel
from services.runtime.errors import from_rpc_error

DEFAULT_TIMEOUT_S = 30.0


class AgentMeshClient:
    def __init__(
        self, address: str, api_key: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.address = address
        self._channel = insecure_channel(address)
        self._stub = api_grpc.AgentServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._timeout_s = timeout_s

    def with_key(self, api_key: str | None) -> AgentMeshClient:
        """A client sharing this one's channel, authenticating with another key."""
        other = object.__new__(AgentMeshClient)
        other.address, other._channel, other._stub = self.address, self._channel, self._stub
        other._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        other._timeout_s = self._timeout_s
        return other

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AgentMeshClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, metadata=self._metadata, timeout=self._timeout_s)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def submit(
        self,
        agent: str,
        input: Any,  # noqa: A002 - the API's own word
        *,
        priority: int = 0,
        budget_usd: float = 0.0,
        budget_tokens: int = 0,
        deadline_s: float = 0.0,
        idempotency_key: str = "",
        labels: Mapping[str, str] | None = None,
        input_json: str | None = None,
    ) -> common_pb2.Task:
        request = api.SubmitTaskRequest(
            agent=agent,
            input_json=input_json if input_json is not None else json.dumps(input),
            priority=priority,
            budget=common_pb2.Budget(usd=budget_usd, tokens=budget_tokens),
            deadline_s=deadline_s,
            idempotency_key=idempotency_key,
            labels=dict(labels or {}),
        )
        return await self._unary(self._stub.SubmitTask, request)

    async def get(self, task_id: str) -> common_pb2.Task:
        return await self._unary(self._stub.GetTask, api.GetTaskRequest(id=task_id))

    async def timeline(self, task_id: str) -> api.TaskTimeline:
        return await self._unary(self._stub.GetTaskTimeline, api.GetTaskTimelineRequest(id=task_id))

    async def journal(self, task_id: str) -> api.TaskJournal:
        """The task with every decision and its results (what `agentmesh export` writes)."""
        return await self._unary(self._stub.GetTaskJournal, api.GetTaskJournalRequest(id=task_id))

    async def list(self, state: int = 0, limit: int = 50, cursor: str = "") -> api.ListTasksResponse:
        return await self._unary(
            self._stub.ListTasks, api.ListTasksRequest(state=state, limit=limit, cursor=cursor)
        )

    async def cancel(self, task_id: str, reason: str = "") -> common_pb2.Task:
        return await self._unary(self._stub.CancelTask, api.CancelTaskRequest(id=task_id, reason=reason))

    async def resolve(
        self, task_id: str, action: str, version: str = "", to_decision: int = 0
    ) -> common_pb2.Task:
        """Decide what happens to a held task: "resume", "reset" (keep `to_decision` decisions) or "fail"."""
        request = api.ResolveTaskRequest(id=task_id, action=action, version=version, to_decision=to_decision)
        return await self._unary(self._stub.ResolveTask, request)

    async def send_input(self, task_id: str, data: Any) -> api.SendInputResponse:
        request = api.SendInputRequest(id=task_id, data_json=json.dumps(data))
        return await self._unary(self._stub.SendInput, request)

    async def list_models(self) -> list[Any]:
        """The models the inference workers serve (inference_pb2.ModelInfo: name, kind, device)."""
        from protos.agentmesh.v1 import inference_pb2

        return list((await self._unary(self._stub.ListModels, inference_pb2.ListModelsRequest())).models)

    async def list_agents(self) -> api.ListAgentsResponse:
        return await self._unary(self._stub.ListAgents, api.ListAgentsRequest())

    async def watch(self, task_id: str, after_seq: int = 0) -> AsyncIterator[common_pb2.Event]:
        """Events after `after_seq`, in order, each once; ends after the task's terminal state event."""
        call = self._stub.WatchTask(
            api.WatchTaskRequest(id=task_id, after_seq=after_seq), metadata=self._metadata
        )
        try:
            async for event in call:
                yield event
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    async def wait(self, task_id: str, after_seq: int = 0) -> common_pb2.Task:
        """Follow the task until it finishes, then return it."""
        async for _ in self.watch(task_id, after_seq):
            pass
        return await self.get(task_id)
