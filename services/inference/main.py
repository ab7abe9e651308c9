"""`agentmesh serve inference`: the inference worker's service shell.

The engine (continuous batching on CuPy/NumPy) is its own piece of work (issue 3). Until a model
is configured this service answers honestly: ListModels is empty and Generate/Embed fail with
FAILED_PRECONDITION, so a pipeline's infer step fails with a clear reason instead of hanging.
Cancellation is already wired: a cancelled call or `cancel.<task>` on the bus ends the task's calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from protos.agentmesh.v1 import bus_pb2, inference_pb2, inference_pb2_grpc
from services.runtime import config as config_mod
from services.runtime import server
from services.runtime.config import CommonConfig, setting
from services.runtime.errors import FailedPrecondition
from services.runtime.server import Runtime, Service

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceConfig(CommonConfig):
    listen: str = setting("", "address to listen on (default: inference_addr)")


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self) -> None:
        self.calls_by_task: dict[str, set[asyncio.Task[object]]] = {}

    def cancel_task(self, task_id: str) -> int:
        calls = self.calls_by_task.get(task_id, set())
        for call in calls:
            call.cancel()
        return len(calls)

    def _no_model(self, what: str) -> FailedPrecondition:
        return FailedPrecondition(f"no {what} model is loaded on this inference worker", reason="NO_MODEL")

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateEvent]:
        raise self._no_model("generation")
        yield  # an async generator: the stream shape of the real engine

    async def Embed(
        self, request: inference_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.EmbedResponse:
        raise self._no_model("embedding")

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ListModelsResponse:
        return inference_pb2.ListModelsResponse()


class InferenceService(Service):
    name = "inference"

    async def setup(self, rt: Runtime) -> None:
        servicer = InferenceServicer()
        inference_pb2_grpc.add_InferenceServicer_to_server(servicer, rt.server)
        rt.add_service_name(inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name)
        rt.spawn(self._follow_cancels(rt, servicer), "cancel-listener")

    async def _follow_cancels(self, rt: Runtime, servicer: InferenceServicer) -> None:
        sub = rt.bus.subscriber("cancel.")
        while True:
            _, payload = await sub.recv()
            try:
                servicer.cancel_task(bus_pb2.CancelNotice.FromString(payload).task_id)
            except Exception:  # noqa: BLE001
                log.exception("bad cancel notice")


def main(argv: list[str]) -> int:
    config = config_mod.load(InferenceConfig, argv, prog="agentmesh serve inference")
    return server.run(InferenceService(), config, config.listen or config.inference_addr)
