"""`agentmesh serve inference`: the inference worker's service shell.

The engine (continuous batching on CuPy/NumPy, models loaded from local files) is its own piece
of work. Until it lands this service answers honestly: ListModels is empty and Generate/Embed fail
at once with FAILED_PRECONDITION (reason NO_MODEL), so a pipeline's infer step fails with a clear
reason instead of hanging. With nothing ever in flight there is nothing to cancel yet; the engine
brings its cancellation (a cancelled call or `cancel.<task>` frees the sequence between two steps).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from protos.agentmesh.v1 import inference_pb2, inference_pb2_grpc
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
        inference_pb2_grpc.add_InferenceServicer_to_server(InferenceServicer(), rt.server)
        rt.add_service_name(inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name)


def main(argv: list[str]) -> int:
    config = config_mod.load(InferenceConfig, argv, prog="agentmesh serve inference")
    return server.run(InferenceService(), config, config.listen or config.inference_addr)
