"""The generation engine: continuous batching on one thread that owns the device.

Requests join the running batch between decode steps (their prompts prefill in the same forward
pass as the running sequences' next tokens) and leave it the moment they finish or are cancelled,
freeing their KV blocks at once. Every step, each sequence's new text is handed to its callback;
the service turns that into a gRPC stream on the event loop (call_soon_threadsafe).

Guarantees: a request's callback gets text events, then exactly one final event (finish reason
`stop`, `length`, `cancelled` or `error`). `cancel` is idempotent and takes effect before the next
step. Embedding jobs run on the same thread, between steps, so one thread owns the device.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.inference.llama import LlamaModel, SeqSlice
from services.inference.prefix_cache import PrefixCache
from services.inference.requests import EmbedJob, GenRequest
from services.inference.sampling import sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    cache_used: float
    steps: int
    tokens: int


class Engine:
    def __init__(
        self,
        model: LlamaModel,
        tokenizer: Any,
        stop_ids: set[int],
        *,
        max_batch: int = 8,
        kv_blocks: int = 256,
        block_size: int = 32,
        max_prefill_tokens: int = 512,
        max_context: int = 2048,
        prefix_caching: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.max_batch = max_batch
        self.max_prefill_tokens = max_prefill_tokens
        self.max_context = min(max_context, model.config.context_length, kv_blocks * block_size)
        if max_batch < 1 or kv_blocks < 1 or block_size < 1:
            raise ValueError("max_batch, kv_blocks and block_size must be positive")
        self.cache = model.new_cache(kv_blocks, block_size)
        self.prefix = PrefixCache(self.cache, enabled=prefix_caching)
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._ids = itertools.count(1)
        self._waiting: list[GenRequest] = []
        self._running: list[GenRequest] = []
        self._cancelled: set[int] = set()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.steps = 0
        self.tokens = 0
        self.step_hook: Callable[[int, float], None] | None = None  # (batch size, seconds) for metrics

    # ---------------------------------------------------------------- any thread

    def start(self) -> None:
        """Start the engine thread and return once it has warmed the model up (model.warm_up).

        The warm-up runs on the engine thread because Numba's OpenMP kernels run slower for good
        (15 -> 26 ms a batch-1 step, measured) once a second thread has launched them: every
        launch of the CPU kernels stays on this one thread."""
        warmed: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._main, args=(warmed,), name="inference-engine", daemon=True
        )
        self._thread.start()
        failure = warmed.get()
        if failure is not None:
            self._thread.join()
            raise failure

    def stop(self) -> None:
        self._stopping = True
        self._inbox.put(("wake", None))
        if self._thread is not None:
            self._thread.join(10)

    def submit(self, request: GenRequest) -> int:
        """Queue a request; returns its id. Too long a prompt finishes at once with `error`."""
        request.id = next(self._ids)
        request.submitted_at = time.monotonic()
        request.rng = np.random.default_rng(request.seed or None)
        self._inbox.put(("add", request))
        return request.id

    def cancel(self, request_id: int) -> None:
        self._inbox.put(("cancel", request_id))

    def embed(self, job: EmbedJob) -> None:
        self._inbox.put(("embed", job))

    def stats(self) -> EngineStats:
        return EngineStats(
            len(self._running), len(self._waiting), self.prefix.used_fraction, self.steps, self.tokens
        )

    # ---------------------------------------------------------------- the engine thread

    def _main(self, warmed: queue.SimpleQueue[BaseException | None]) -> None:
        try:
            self.model.warm_up()
        except BaseException as exc:  # noqa: BLE001 - handed to start(), which raises it
            warmed.put(exc)
            return
        warmed.put(None)
        while not self._stopping:
            idle = not self._running and not self._waiting
            self._drain(block=idle)
            if self._stopping:
                break
            self._admit()
            if self._running:
                try:
                    self._step()
                except Exception as exc:  # noqa: BLE001 - fail the batch, keep the engine alive
                    log.exception("engine step failed")
                    for request in list(self._running):
                        self._finish(request, "error", detail=str(exc))
        for request in self._running + self._waiting:
            self._finish(request, "cancelled")

    def _drain(self, block: bool) -> None:
        try:
            item = self._inbox.get() if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            kind, value = item
            if kind == "add":
                self._waiting.append(value)
            elif kind == "cancel":
                self._cancel_now(value)
            elif kind == "embed":
                try:
                    value.done(value.run(), None)
                except Exception as exc:  # noqa: BLE001 - handed to the caller
                    value.done(None, exc)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _cancel_now(self, request_id: int) -> None:
        for pool in (self._waiting, self._running):
            for request in pool:
                if request.id == request_id:
                    self._finish(request, "cancelled")
                    return

    def _admit(self) -> None:
        while self._waiting and len(self._running) < self.max_batch:
            request = self._waiting[0]
            total = len(request.prompt_ids) + request.max_tokens
            if len(request.prompt_ids) >= self.max_context:
                self._waiting.pop(0)
                request.on_event(
                    "",
                    True,
                    "error",
                    {
                        "detail": f"prompt of {len(request.prompt_ids)} tokens "
                        f"exceeds the context of {self.max_context}"
                    },
                )
                continue
            total = min(total, self.max_context)
            shared = self.prefix.match(request.prompt_ids)
            need = self.cache.blocks_for(total) - len(shared)
            if need > self.prefix.available or self._prefix_in_flight(request, len(shared)):
                self.prefix.release(shared)
                return  # wait for blocks to free up, or for a prefix being computed right now
            self._waiting.pop(0)
            request.blocks = shared + self.prefix.allocate(need)
            request.prefill_pos = request.cached_tokens = len(shared) * self.cache.block_size
            request.max_tokens = total - len(request.prompt_ids)
            self._running.append(request)

    def _prefix_in_flight(self, request: GenRequest, cached_blocks: int) -> bool:
        """Whether a running request is still prefilling prompt blocks that `request` shares with
        it beyond the `cached_blocks` the cache gives it now. Waiting a step for them is cheaper
        than computing the same blocks twice (the candidates of a codegen attempt arrive together
        with one prompt); a prefix that is already cached is no reason to wait."""
        size = self.cache.block_size
        limit = self.prefix.shareable_blocks(request.prompt_ids)
        if limit <= cached_blocks:
            return False
        mine = request.prompt_ids
        for other in self._running:
            if other.prefill_pos >= len(other.prompt_ids):
                continue
            theirs = other.prompt_ids
            common = 0
            while (
                common < limit
                and mine[common * size : (common + 1) * size] == theirs[common * size : (common + 1) * size]
            ):
                common += 1
            if common > cached_blocks and other.prefill_pos < common * size:
                return True
        return False

    def _step(self) -> None:
        """One forward pass: the next token of every decoding sequence, plus chunks of the prompts
        still prefilling, at most `max_prefill_tokens` of them per step (chunked prefill: a long or
        late prompt does not stall the streams already decoding)."""
        batch: list[SeqSlice] = []
        members: list[tuple[GenRequest, bool]] = []  # (request, samples after this step)
        budget = self.max_prefill_tokens
        for request in self._running:
            done = request.prefill_pos
            if done >= len(request.prompt_ids):
                position = len(request.prompt_ids) + len(request.generated) - 1
                batch.append(SeqSlice(request.blocks, position, [request.generated[-1]]))
                members.append((request, True))
            elif budget > 0:
                chunk = request.prompt_ids[done : done + budget]
                budget -= len(chunk)
                batch.append(SeqSlice(request.blocks, done, chunk))
                members.append((request, done + len(chunk) >= len(request.prompt_ids)))
        started = time.perf_counter()
        logits = self.model.backend.to_host(self.model.forward(self.cache, batch))
        elapsed = time.perf_counter() - started
        self.steps += 1
        if self.step_hook is not None:
            self.step_hook(len(batch), elapsed)
        share_ms = elapsed * 1000 / len(batch)  # a shared step's cost, split evenly
        for (request, samples), piece, row in zip(members, batch, logits, strict=True):
            request.engine_ms += share_ms
            if request.prefill_pos < len(request.prompt_ids):
                request.prefill_pos += len(piece.tokens)
                self.prefix.register(request.prompt_ids, request.blocks, request.prefill_pos)
            if not samples:
                continue  # a prompt chunk short of the end: nothing to sample yet
            token = sample(row, request.temperature, request.top_k, request.top_p, request.rng)  # type: ignore[arg-type]
            if not request.generated:
                request.first_token_at = time.monotonic()
            request.generated.append(token)
            self.tokens += 1
            self._emit(request, token)

    def _emit(self, request: GenRequest, token: int) -> None:
        end_of_text = token in self.stop_ids and not request.ignore_eos
        if end_of_text:
            request.generated.pop()
        text = self.tokenizer.decode(request.generated, skip_special_tokens=True)
        for stop in request.stop:
            at = text.find(stop)
            if at != -1:
                if at > request.emitted:
                    request.on_event(text[request.emitted : at], False, "", {})
                request.emitted = at
                self._finish(request, "stop")
                return
        final = end_of_text or len(request.generated) >= request.max_tokens
        if final:
            ready = len(text)
        else:
            # Hold back an incomplete UTF-8 sequence, and what could be the start of a stop string.
            hold = max((len(s) - 1 for s in request.stop), default=0)
            ready = len(text.rstrip("\ufffd")) - hold
        if ready > request.emitted:
            request.on_event(text[request.emitted : ready], False, "", {})
            request.emitted = ready
        if final:
            self._finish(request, "stop" if end_of_text else "length")

    def _finish(self, request: GenRequest, reason: str, detail: str = "") -> None:
        if request in self._running:
            self._running.remove(request)
        elif request in self._waiting:
            self._waiting.remove(request)
        self.prefix.release(request.blocks)
        usage = {
            "prompt_tokens": len(request.prompt_ids),
            "cached_prompt_tokens": request.cached_tokens,
            "completion_tokens": len(request.generated),
            "engine_ms": request.engine_ms,
            "ttft_ms": (request.first_token_at - request.submitted_at) * 1000
            if request.first_token_at
            else 0.0,
        }
        if detail:
            usage["detail"] = detail  # type: ignore[assignment]
        request.on_event("", True, reason, usage)
