"""What callers hand the engine: generation requests (with the engine's per-request state) and
embedding jobs. Kept apart from the engine so the service can build them without loading NumPy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# (text, final, finish_reason, usage)
EventSink = Callable[[str, bool, str, dict[str, float]], None]


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_tokens: int
    on_event: EventSink
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    # Generate exactly max_tokens, past the end-of-text token (benchmarks measure fixed lengths).
    ignore_eos: bool = False
    id: int = 0
    # engine state
    blocks: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    emitted: int = 0
    prefill_pos: int = 0  # prompt tokens already in the KV cache
    cached_tokens: int = 0  # of those, how many came from the prefix cache
    engine_ms: float = 0.0
    submitted_at: float = 0.0
    first_token_at: float = 0.0
    rng: Any = None  # numpy.random.Generator, made by the engine


@dataclass
class EmbedJob:
    run: Callable[[], Any]
    done: Callable[[Any, BaseException | None], None]
