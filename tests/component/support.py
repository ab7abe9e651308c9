"""Shared by the inference component tests: the default model, an engine, an in-process service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from protos.agentmesh.v1 import inference_pb2_grpc
from services.inference import models
from services.inference.engine import Engine
from services.inference.generator import Generator, load_generator
from services.inference.servicer import InferenceServicer
from services.inference.xp import select_backend
from services.runtime.interceptors import ServiceInterceptor


def default_generator() -> Generator:
    path, name = models.resolve("default", models.DEFAULT_GENERATE)  # type: ignore[misc]
    return load_generator(select_backend("cpu"), path, name)


def make_engine(generator: Generator, **overrides: Any) -> Engine:
    """A small engine on the generator's model (not started)."""
    settings = {"max_batch": 2, "kv_blocks": 64, "block_size": 16, "max_context": 512, **overrides}
    return Engine(generator.model, generator.tokenizer, generator.stop_ids, **settings)


@asynccontextmanager
async def inference_stub(servicer: InferenceServicer) -> AsyncIterator[inference_pb2_grpc.InferenceStub]:
    """The servicer behind a real grpc.aio server on a free loopback port, with the shared interceptor."""
    server = grpc.aio.server(interceptors=[ServiceInterceptor()])
    inference_pb2_grpc.add_InferenceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            stub.channel = channel  # type: ignore[attr-defined]  # for raw calls the stub cannot make
            yield stub
    finally:
        await server.stop(None)
