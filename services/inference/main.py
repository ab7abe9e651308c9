"""`agentmesh serve inference`: batched generation and embeddings, on CUDA through CuPy when a GPU
works here and on NumPy otherwise. Health says NOT_SERVING until the models are loaded and warm."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protos.agentmesh.v1 import bus_pb2, inference_pb2, inference_pb2_grpc
from services.inference import models
from services.inference.servicer import InferenceServicer
from services.runtime import config as config_mod
from services.runtime import server
from services.runtime.config import CommonConfig, setting
from services.runtime.server import Runtime, Service

if TYPE_CHECKING:
    from services.inference.engine import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceConfig(CommonConfig):
    listen: str = setting("", "address to listen on (default: inference_addr)")
    generate_model: str = setting(
        "default", "llama-family .gguf file or HF directory, `default` (SmolLM2-135M-Instruct) or `none`"
    )
    embed_model: str = setting("default", "BERT-family directory, `default` (all-MiniLM-L6-v2) or `none`")
    device: str = setting("auto", "auto (CUDA if a kernel runs, else CPU), cpu or cuda")
    max_batch: int = setting(8, "sequences decoded together")
    kv_blocks: int = setting(128, "KV cache blocks (each holds block_size positions of every layer)")
    block_size: int = setting(32, "positions per KV cache block")
    max_context: int = setting(2048, "longest prompt + completion, in tokens")
    prefix_caching: bool = setting(True, "reuse the KV blocks of prompt prefixes seen before")
    blas_threads: int = setting(
        0, "BLAS and small-batch kernel threads on the CPU (0: all cores but one, at least one)"
    )
    openai_base_url: str = setting(
        "", "an OpenAI-compatible server to forward to, e.g. http://127.0.0.1:8000/v1"
    )
    openai_model: str = setting("", "the model name to ask that server for (and to serve it under)")
    openai_api_key: str = setting("", "bearer key for that server")
    openai_rate: float = setting(0.0, "requests per second to that server (0: unlimited)")
    openai_burst: float = setting(10.0, "burst of that rate")


class InferenceService(Service):
    name = "inference"

    def __init__(self, config: InferenceConfig) -> None:
        self.config = config
        self.servicer: InferenceServicer | None = None
        self.engine: Engine | None = None

    async def setup(self, rt: Runtime) -> None:
        # Registered now (handlers must exist before the server starts); filled in by `warm`.
        cfg = self.config
        wanted = [
            f"{kind}={name}" for kind, name in (("generate", cfg.generate_model), ("embed", cfg.embed_model))
        ]
        loading = ", ".join(w for w in wanted if not w.endswith("=none"))
        self.servicer = InferenceServicer(loading=loading)
        inference_pb2_grpc.add_InferenceServicer_to_server(self.servicer, rt.server)
        rt.add_service_name(inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name)

    async def warm(self, rt: Runtime) -> None:
        cfg = self.config
        assert self.servicer is not None
        if cfg.openai_base_url:
            from services.inference.openai_backend import OpenAIBackend, OpenAIConfig  # noqa: PLC0415

            if not cfg.openai_model:
                raise ValueError("openai_base_url needs openai_model")
            self.servicer.remote = OpenAIBackend(
                OpenAIConfig(
                    base_url=cfg.openai_base_url,
                    model=cfg.openai_model,
                    api_key=cfg.openai_api_key,
                    rate=cfg.openai_rate,
                    burst=cfg.openai_burst,
                )
            )
            log.info("forwarding model %s to %s", cfg.openai_model, cfg.openai_base_url)
        if cfg.generate_model == "none" and cfg.embed_model == "none":
            self.servicer.loading = ""
            log.info("no local models configured")
            rt.spawn(self._follow_cancels(rt), "cancel-listener")
            return
        # The engine's libraries (NumPy or CuPy, tokenizers, gguf) load only when a model is wanted.
        from services.inference.engine import Engine  # noqa: PLC0415
        from services.inference.xp import select_backend  # noqa: PLC0415

        threads = cfg.blas_threads or max(1, (os.cpu_count() or 2) - 1)
        from threadpoolctl import threadpool_limits  # noqa: PLC0415

        # On a small machine, BLAS oversubscription collapses throughput: leave a core to the gRPC front.
        threadpool_limits(limits=threads)
        backend = select_backend(cfg.device)
        started = time.monotonic()
        generator, embedder = await asyncio.get_running_loop().run_in_executor(None, self._load, backend)
        engine = None
        if generator is not None:
            engine = Engine(
                generator.model,
                generator.tokenizer,
                generator.stop_ids,
                max_batch=cfg.max_batch,
                kv_blocks=cfg.kv_blocks,
                block_size=cfg.block_size,
                max_context=cfg.max_context,
                prefix_caching=cfg.prefix_caching,
            )
            # Starting warms the model up on the engine's own thread (Engine.start says why).
            await asyncio.get_running_loop().run_in_executor(None, engine.start)
        self.engine = engine
        assert self.servicer is not None
        self.servicer.attach(engine, generator, embedder, backend.name)
        log.info(
            "models ready on %s in %.1fs: generate=%s embed=%s (BLAS threads %d)",
            backend.name,
            time.monotonic() - started,
            generator.name if generator else "none",
            embedder.name if embedder else "none",
            threads,
        )
        rt.spawn(self._follow_cancels(rt), "cancel-listener")

    def _load(self, backend):  # type: ignore[no-untyped-def]
        from services.inference.bert import BertEmbedder  # noqa: PLC0415
        from services.inference.generator import load_generator  # noqa: PLC0415

        cfg = self.config
        generator = None
        embedder = None
        generate = models.resolve(cfg.generate_model, models.DEFAULT_GENERATE)
        if generate is not None:
            generator = load_generator(backend, *generate)
        embed = models.resolve(cfg.embed_model, models.DEFAULT_EMBED)
        if embed is not None:
            embedder = BertEmbedder(backend, *embed)
            embedder.embed(["warm up"])
        return generator, embedder

    async def _follow_cancels(self, rt: Runtime) -> None:
        sub = rt.bus.subscriber("cancel.")
        while True:
            _, payload = await sub.recv()
            try:
                if self.servicer is not None and self.servicer.engine is not None:
                    self.servicer.cancel_task(bus_pb2.CancelNotice.FromString(payload).task_id)
            except Exception:  # noqa: BLE001 - a bad message must not stop cancellation
                log.exception("bad cancel notice")

    async def close(self) -> None:
        if self.servicer is not None and self.servicer.remote is not None:
            await self.servicer.remote.close()
        if self.engine is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.engine.stop)


def main(argv: list[str]) -> int:
    config = config_mod.load(InferenceConfig, argv, prog="agentmesh serve inference")
    return server.run(InferenceService(config), config, config.listen or config.inference_addr)
