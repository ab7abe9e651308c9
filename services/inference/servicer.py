"""Inference over gRPC: streams tokens from the engine thread back onto the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from protos.agentmesh.v1 import inference_pb2, inference_pb2_grpc
from services.inference.requests import EmbedJob, GenRequest
from services.runtime import metrics
from services.runtime.errors import FailedPrecondition, InvalidArgument, Unavailable

if TYPE_CHECKING:
    from services.inference.bert import BertEmbedder
    from services.inference.engine import Engine
    from services.inference.generator import Generator
    from services.inference.openai_backend import OpenAIBackend

MAX_EMBED_TEXTS = 256
MAX_EMBED_CHARS = 100_000

TOKENS = metrics.Counter(
    "agentmesh_inference_tokens_total", "tokens (kind: prompt, prompt_cached, completion)", ["model", "kind"]
)
TTFT = metrics.Histogram(
    "agentmesh_inference_ttft_seconds",
    "time to first token",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ITL = metrics.Histogram(
    "agentmesh_inference_inter_token_seconds",
    "time between tokens of a sequence",
    ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
RUNNING = metrics.Gauge("agentmesh_inference_running", "sequences in the running batch")
WAITING = metrics.Gauge("agentmesh_inference_waiting", "sequences waiting for a slot")
CACHE = metrics.Gauge("agentmesh_inference_kv_cache_used", "fraction of KV blocks in use")


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, loading: str = "") -> None:
        # What is still loading ("" once the models are in, or when none is configured): a call that
        # needs it meanwhile is UNAVAILABLE (retryable: the coordinator waits), not NO_MODEL.
        self.loading = loading
        self.engine: Engine | None = None
        self.generator: Generator | None = None
        self.embedder: BertEmbedder | None = None
        self.device = "none"
        self.remote: OpenAIBackend | None = None
        self._by_task: dict[str, set[int]] = {}

    def attach(
        self, engine: Engine | None, generator: Generator | None, embedder: BertEmbedder | None, device: str
    ) -> None:
        """The models, once loaded (the servicer is registered before the server starts, they later)."""
        self.engine, self.generator, self.embedder, self.device = engine, generator, embedder, device
        self.loading = ""
        if engine is not None:
            RUNNING.set_function(lambda: engine.stats().running)
            WAITING.set_function(lambda: engine.stats().waiting)
            CACHE.set_function(lambda: engine.stats().cache_used)

    def _refuse_unloaded(self, kind: str) -> None:
        if self.loading:
            raise Unavailable(
                f"the inference worker is still loading its models ({self.loading})", reason="MODELS_LOADING"
            )
        raise FailedPrecondition(f"no {kind} model is configured on this inference worker", reason="NO_MODEL")

    def cancel_task(self, task_id: str) -> int:
        """Drop every sequence of a task (the bus's `cancel.<id>`); they leave before the next step."""
        ids = self._by_task.get(task_id, set())
        for request_id in list(ids):
            self.engine.cancel(request_id)  # type: ignore[union-attr]
        return len(ids)

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateEvent]:
        params = request.params
        remote = self.remote
        if remote is not None and (
            # The default model is the local one, once loaded; the remote one only where none loads.
            params.model == remote.name or (not params.model and self.generator is None and not self.loading)
        ):
            async for event in self._generate_remote(remote, params):
                yield event
            return
        if self.engine is None or self.generator is None:
            self._refuse_unloaded("generation")
        if params.model and params.model != self.generator.name:
            served = [self.generator.name] + ([remote.name] if remote is not None else [])
            raise InvalidArgument(
                f"model {params.model!r} is not served here (serving {', '.join(map(repr, served))})",
                reason="UNKNOWN_MODEL",
            )
        _check_params(params, self.engine.max_context)
        messages = [(m.role or "user", m.content) for m in params.messages]
        prompt_ids = self.generator.prompt_ids(params.prompt, messages)
        if len(prompt_ids) >= self.engine.max_context:
            raise InvalidArgument(
                f"the prompt is {len(prompt_ids)} tokens; the context holds {self.engine.max_context}",
                reason="PROMPT_TOO_LONG",
            )
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, bool, str, dict[str, Any]]] = asyncio.Queue()
        gen = GenRequest(
            prompt_ids=prompt_ids,
            max_tokens=max(1, params.max_tokens or 256),
            on_event=lambda *event: loop.call_soon_threadsafe(events.put_nowait, event),
            temperature=params.temperature,
            top_p=params.top_p or 1.0,
            top_k=params.top_k,
            seed=params.seed,
            stop=list(params.stop),
        )
        request_id = self.engine.submit(gen)
        self._by_task.setdefault(request.task_id, set()).add(request_id)
        name = self.generator.name
        last = time.monotonic()
        finished = False
        try:
            while True:
                text, final, reason, usage = await events.get()
                now = time.monotonic()
                if final:
                    finished = True
                    if reason == "error":
                        raise Unavailable(
                            f"generation failed: {usage.get('detail', 'engine error')}", reason="ENGINE_ERROR"
                        )
                    TOKENS.labels(name, "prompt").inc(usage["prompt_tokens"])
                    TOKENS.labels(name, "completion").inc(usage["completion_tokens"])
                    # prompt tokens whose K/V came from the prefix cache (a part of "prompt")
                    TOKENS.labels(name, "prompt_cached").inc(usage.get("cached_prompt_tokens", 0))
                    if usage.get("ttft_ms"):
                        TTFT.labels(name).observe(usage["ttft_ms"] / 1000)
                    engine_ms = float(usage["engine_ms"])
                    yield inference_pb2.GenerateEvent(
                        final=True,
                        finish_reason=reason,
                        usage=inference_pb2.Usage(
                            prompt_tokens=int(usage["prompt_tokens"]),
                            completion_tokens=int(usage["completion_tokens"]),
                            engine_ms=engine_ms,
                            gpu_ms=engine_ms if self.engine.model.backend.is_gpu else 0.0,
                        ),
                    )
                    return
                ITL.labels(name).observe(now - last)
                last = now
                # The usage so far rides on every token event: a caller that cancels the stream
                # still knows what the generation used (the engine thread updates these fields).
                yield inference_pb2.GenerateEvent(
                    text=text,
                    usage=inference_pb2.Usage(
                        prompt_tokens=len(prompt_ids),
                        completion_tokens=len(gen.generated),
                        engine_ms=gen.engine_ms,
                        gpu_ms=gen.engine_ms if self.engine.model.backend.is_gpu else 0.0,
                    ),
                )
        finally:
            if not finished:
                self.engine.cancel(request_id)  # the caller left: free the sequence before the next step
            ids = self._by_task.get(request.task_id)
            if ids is not None:
                ids.discard(request_id)
                if not ids:
                    del self._by_task[request.task_id]

    async def _generate_remote(
        self, remote: OpenAIBackend, params: Any
    ) -> AsyncIterator[inference_pb2.GenerateEvent]:
        """Forward to the OpenAI-compatible backend; closing this stream closes the HTTP one."""
        _check_params(params, 1 << 30)
        messages = [(m.role or "user", m.content) for m in params.messages] or [("user", params.prompt)]
        started = time.monotonic()
        chunks = 0
        async for chunk in remote.generate(messages, params):
            if chunk.final:
                TOKENS.labels(remote.name, "prompt").inc(chunk.prompt_tokens)
                TOKENS.labels(remote.name, "completion").inc(chunk.completion_tokens)
                yield inference_pb2.GenerateEvent(
                    final=True,
                    finish_reason=chunk.finish_reason,
                    usage=inference_pb2.Usage(
                        prompt_tokens=chunk.prompt_tokens,
                        completion_tokens=chunk.completion_tokens,
                        engine_ms=(time.monotonic() - started) * 1000,
                    ),
                )
                return
            # The backend reports usage only at the end; until then each chunk counts as a token.
            chunks += 1
            yield inference_pb2.GenerateEvent(
                text=chunk.text,
                usage=inference_pb2.Usage(
                    completion_tokens=chunks, engine_ms=(time.monotonic() - started) * 1000
                ),
            )

    async def Embed(
        self, request: inference_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.EmbedResponse:
        if self.embedder is None:
            self._refuse_unloaded("embedding")
        texts = list(request.params.texts)
        if not texts:
            raise InvalidArgument("embed needs at least one text")
        if len(texts) > MAX_EMBED_TEXTS or sum(len(t) for t in texts) > MAX_EMBED_CHARS:
            raise InvalidArgument(
                f"at most {MAX_EMBED_TEXTS} texts and {MAX_EMBED_CHARS} characters per call"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        embedder = self.embedder

        def done(value: Any, error: BaseException | None) -> None:
            def settle() -> None:
                if future.done():
                    return
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(value)

            loop.call_soon_threadsafe(settle)

        started = time.perf_counter()
        job = EmbedJob(run=lambda: embedder.embed(texts), done=done)
        if self.engine is not None:
            self.engine.embed(job)  # the engine thread owns the device
        else:
            done(*_run_job(job))
        vectors, tokens = await future
        engine_ms = (time.perf_counter() - started) * 1000
        backend_gpu = embedder.backend.is_gpu
        TOKENS.labels(embedder.name, "embed").inc(tokens)
        return inference_pb2.EmbedResponse(
            vectors=[inference_pb2.Vector(values=row.tolist()) for row in vectors],
            usage=inference_pb2.Usage(
                prompt_tokens=tokens, engine_ms=engine_ms, gpu_ms=engine_ms if backend_gpu else 0.0
            ),
        )

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ListModelsResponse:
        models = []
        if self.generator is not None:
            models.append(
                inference_pb2.ModelInfo(name=self.generator.name, kind="generate", device=self.device)
            )
        if self.remote is not None:
            models.append(inference_pb2.ModelInfo(name=self.remote.name, kind="generate", device="remote"))
        if self.embedder is not None:
            models.append(inference_pb2.ModelInfo(name=self.embedder.name, kind="embed", device=self.device))
        return inference_pb2.ListModelsResponse(models=models)


def _check_params(params: Any, max_context: int) -> None:
    """INVALID_ARGUMENT, naming every bad field, for requests the engine must not see."""
    problems = []
    if not params.prompt.strip() and not any(m.content.strip() for m in params.messages):
        problems.append(("prompt", "empty: give a prompt or messages"))
    if params.max_tokens < 0 or params.max_tokens >= max_context:
        problems.append(("max_tokens", f"must be from 1 to {max_context - 1} (0 means the default)"))
    if not 0.0 <= params.temperature <= 100.0 or params.temperature != params.temperature:
        problems.append(("temperature", "must be from 0 to 100"))
    if not 0.0 <= params.top_p <= 1.0 or params.top_p != params.top_p:
        problems.append(("top_p", "must be from 0 to 1 (0 means 1)"))
    if params.top_k < 0:
        problems.append(("top_k", "must not be negative"))
    if len(params.stop) > 16 or any(not s or len(s) > 256 for s in params.stop):
        problems.append(("stop", "at most 16 non-empty strings of up to 256 characters"))
    for index, message in enumerate(params.messages):
        if message.role not in ("", "system", "user", "assistant", "tool"):
            problems.append((f"messages[{index}].role", "system, user, assistant or tool"))
    if problems:
        raise InvalidArgument("; ".join(f"{f}: {d}" for f, d in problems), field_violations=problems)


def _run_job(job: EmbedJob) -> tuple[Any, BaseException | None]:
    try:
        return job.run(), None
    except Exception as exc:  # noqa: BLE001
        return None, exc
