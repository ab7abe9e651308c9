"""A second generation backend: forward to any OpenAI-compatible server (vLLM, llama.cpp's server,
Ollama, a hosted API) for teams that already run a model elsewhere.

Streams `/chat/completions`, with a token-bucket rate limit on the backend and retries with
backoff on 429 and 5xx (honouring Retry-After), but only before the first token: once text has
reached the caller, a failure is reported rather than repeated.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from services.runtime.errors import AgentMeshError, InvalidArgument, ResourceExhausted, Unavailable
from services.runtime.ratelimit import TokenBucket

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class OpenAIConfig:
    base_url: str
    model: str
    api_key: str = ""
    rate: float = 0.0  # requests per second; 0: unlimited
    burst: float = 10.0
    max_retries: int = 4
    timeout_s: float = 600.0


@dataclass
class Chunk:
    text: str = ""
    final: bool = False
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0


class OpenAIBackend:
    def __init__(self, config: OpenAIConfig, client: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self.name = config.model
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(config.timeout_s, connect=10.0))
        self._bucket = TokenBucket(config.rate, config.burst, time.monotonic())
        self.retries = 0

    async def close(self) -> None:
        await self._client.aclose()

    def _body(self, messages: list[tuple[str, str]], params: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [{"role": role, "content": content} for role, content in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.max_tokens:
            body["max_tokens"] = params.max_tokens
        body["temperature"] = params.temperature
        if params.top_p:
            body["top_p"] = params.top_p
        if params.seed:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        return body

    async def generate(self, messages: list[tuple[str, str]], params: Any) -> AsyncIterator[Chunk]:
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        body = self._body(messages, params)
        for attempt in range(self.config.max_retries + 1):
            wait = self._bucket.take(time.monotonic())
            if wait > 0:
                await asyncio.sleep(wait)
                self._bucket.take(time.monotonic())
            retry_after: float | None = None
            async with self._client.stream("POST", url, json=body, headers=headers) as reply:
                if reply.status_code in RETRY_STATUSES and attempt < self.config.max_retries:
                    retry_after = _retry_after(reply.headers.get("retry-after"), attempt)
                elif reply.status_code >= 400:
                    raise _error_for(reply.status_code, (await reply.aread()).decode(errors="replace"))
                else:
                    async for chunk in _parse_stream(reply):
                        yield chunk
                    return
            self.retries += 1
            await asyncio.sleep(retry_after)
        raise Unavailable("the OpenAI-compatible backend kept failing", reason="BACKEND_UNAVAILABLE")


async def _parse_stream(reply: httpx.Response) -> AsyncIterator[Chunk]:
    usage: dict[str, int] = {}
    finish = ""
    async for line in reply.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        event = json.loads(data)
        if event.get("usage"):
            usage = event["usage"]
        for choice in event.get("choices") or []:
            text = (choice.get("delta") or {}).get("content") or ""
            if text:
                yield Chunk(text=text)
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
    yield Chunk(
        final=True,
        finish_reason=finish or "stop",
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        completion_tokens=int(usage.get("completion_tokens", 0)),
    )


def _retry_after(header: str | None, attempt: int) -> float:
    if header:
        try:
            return min(60.0, max(0.0, float(header)))
        except ValueError:
            pass
    return min(30.0, 0.5 * 2**attempt) * random.uniform(0.8, 1.2)  # noqa: S311 - jitter


def _error_for(status: int, text: str) -> AgentMeshError:
    message = f"backend answered {status}: {text[:500]}"
    if status == 429:
        return ResourceExhausted(message, reason="BACKEND_RATE_LIMITED", retry_after_s=5.0)
    if status in (400, 404, 422):
        return InvalidArgument(message, reason="BACKEND_REFUSED")
    return Unavailable(message, reason="BACKEND_ERROR")
