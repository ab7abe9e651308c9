"""The coordinator's gRPC clients for the stateless workers (planner, executor, inference).

The task loop in core.py talks to this class only; it never sees a channel or a status code.
Worker errors come back as `AgentMeshError`s. Cancelling the awaiting coroutine cancels the RPC,
which is how a cancelled task stops its in-flight actions at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import grpc

from protos.agentmesh.v1 import agent_service_pb2 as api
from protos.agentmesh.v1 import common_pb2 as pb
from protos.agentmesh.v1 import (
    executor_pb2,
    executor_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    planner_pb2,
    planner_pb2_grpc,
)
from services.runtime.channels import insecure_channel
from services.runtime.errors import from_rpc_error

OutputSink = Callable[[str, bytes], None]


class Workers:
    def __init__(self, planner_addr: str, executor_addr: str, inference_addr: str) -> None:
        self._channels = [insecure_channel(a) for a in (planner_addr, executor_addr, inference_addr)]
        self.planner = planner_pb2_grpc.PlannerStub(self._channels[0])
        self.executor = executor_pb2_grpc.ExecutorStub(self._channels[1])
        self.inference = inference_pb2_grpc.InferenceStub(self._channels[2])

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(grace=None)

    async def decide(self, request: planner_pb2.DecideRequest, timeout: float) -> pb.Decision:
        try:
            return await self.planner.Decide(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def validate(self, agent: str, input_json: str, timeout: float) -> None:
        try:
            await self.planner.Validate(
                planner_pb2.ValidateRequest(agent=agent, input_json=input_json), timeout=timeout
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def list_agents(self, timeout: float) -> list[api.AgentInfo]:
        try:
            reply = await self.planner.ListAgents(api.ListAgentsRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return list(reply.agents)

    async def run_exec(
        self, task_id: str, action: pb.Action, timeout: float, on_output: OutputSink, attempt: int = 1
    ) -> pb.ActionResult:
        request = executor_pb2.ExecRequest(
            task_id=task_id, action_id=action.id, action=action.exec, timeout_s=timeout, attempt=attempt
        )
        # A margin over the executor's own wall limit: it reports TIMED_OUT itself, with the output.
        call = self.executor.Exec(request, timeout=timeout + 10.0)
        try:
            async for event in call:
                if event.HasField("output"):
                    on_output(event.output.stream, event.output.data)
                elif event.HasField("result"):
                    return event.result
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()
        raise from_rpc_error_missing("executor ended the stream without a result")

    async def run_infer(
        self, task_id: str, action: pb.Action, timeout: float, on_output: OutputSink
    ) -> pb.ActionResult:
        started = time.monotonic()
        request = inference_pb2.GenerateRequest(task_id=task_id, action_id=action.id, params=action.infer)
        call = self.inference.Generate(request, timeout=timeout)
        pieces: list[str] = []
        try:
            async for event in call:
                if event.text:
                    pieces.append(event.text)
                    on_output("tokens", event.text.encode())
                if event.final:
                    usage = event.usage
                    return pb.ActionResult(
                        action_id=action.id,
                        key=action.key,
                        status=pb.ACTION_STATUS_OK,
                        output_json=json.dumps(
                            {"text": "".join(pieces), "finish_reason": event.finish_reason}
                        ),
                        cost=pb.Cost(
                            tokens_in=usage.prompt_tokens,
                            tokens_out=usage.completion_tokens,
                            gpu_ms=usage.gpu_ms,
                            cpu_ms=usage.engine_ms if not usage.gpu_ms else 0.0,
                            wall_ms=(time.monotonic() - started) * 1000,
                        ),
                    )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()
        raise from_rpc_error_missing("inference ended the stream without a final event")

    async def run_embed(self, task_id: str, action: pb.Action, timeout: float) -> pb.ActionResult:
        started = time.monotonic()
        request = inference_pb2.EmbedRequest(task_id=task_id, action_id=action.id, params=action.embed)
        try:
            reply = await self.inference.Embed(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return pb.ActionResult(
            action_id=action.id,
            key=action.key,
            status=pb.ACTION_STATUS_OK,
            output_json=json.dumps({"vectors": [list(v.values) for v in reply.vectors]}),
            cost=pb.Cost(
                tokens_in=reply.usage.prompt_tokens,
                gpu_ms=reply.usage.gpu_ms,
                cpu_ms=reply.usage.engine_ms if not reply.usage.gpu_ms else 0.0,
                wall_ms=(time.monotonic() - started) * 1000,
            ),
        )


def from_rpc_error_missing(message: str) -> Exception:
    from services.runtime.errors import Unavailable

    return Unavailable(message, reason="WORKER_PROTOCOL")
