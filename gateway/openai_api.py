"""The OpenAI-compatible API: `/v1/models`, `/v1/chat/completions` (with `stream: true` as SSE
chunks) and `/v1/embeddings`, so the official client, LangChain and editors can use the mesh's models.

Each completion or embedding is a task of its own (a one-step `pipeline`, labelled `api: openai`), so
it goes through the same API keys, tenants, submit rate limits, inference workers, continuous batching
and spend accounting as every task, and shows in `agentmesh list` and the tenant's spend. The
completion's id is `chatcmpl-<task id>`. A client that goes away mid-stream cancels its task, so the
generation stops and nothing more is charged. Errors have OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`, with the same HTTP status as the task API's.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agentmesh.client import AgentMeshClient
from gateway.errors import HttpError, http_status_for, unexpected_error
from protos.agentmesh.v1 import common_pb2 as pb
from services.runtime.errors import AgentMeshError, Cancelled, InvalidArgument, NotFound

log = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]
DEFAULT_MAX_TOKENS = 512
MAX_STOP = 4
MAX_EMBED_INPUTS = 256
LABELS = {"api": "openai"}
ROLES = ("system", "user", "assistant", "developer", "tool")
# A step failure that is the request's fault: 400 rather than 502.
CLIENT_FAULTS = frozenset({"PROMPT_TOO_LONG", "UNKNOWN_MODEL", "INVALID_ARGUMENT", "BUDGET_EXCEEDED"})
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 429: "rate_limit_error"}  # fmt: skip


# ------------------------------------------------------------------ requests, checked


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    stream: bool = False
    include_usage: bool = False
    args: dict[str, Any] = field(default_factory=dict)  # the infer step's sampling arguments


def _number(body: dict[str, Any], name: str, low: float, high: float, problems: list[tuple[str, str]]) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        problems.append((name, f"a number from {low:g} to {high:g}"))
    return value


def _text(content: Any) -> str | None:
    """A message's content: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    return None


def parse_chat(body: dict[str, Any]) -> ChatRequest:
    problems: list[tuple[str, str]] = []
    model = body.get("model")
    if not isinstance(model, str) or not model:
        problems.append(("model", "required: a model id from GET /v1/models"))
    messages = []
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        problems.append(("messages", "required: a non-empty list of {role, content}"))
        raw = []
    for index, message in enumerate(raw):
        content = _text(message.get("content")) if isinstance(message, dict) else None
        if not isinstance(message, dict) or message.get("role") not in ROLES or content is None:
            problems.append((f"messages[{index}]", f"{{role: {'|'.join(ROLES)}, content: text}}"))
            continue
        role = "system" if message["role"] == "developer" else message["role"]
        messages.append({"role": role, "content": content})
    if body.get("n", 1) != 1:
        problems.append(("n", "only 1 is supported"))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        problems.append(("stream", "true or false"))
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        problems.append(("stream_options", "an object"))
        options = {}
    args: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if (
            isinstance(max_tokens, bool)
            or not isinstance(max_tokens, int)
            or not 1 <= max_tokens <= 1_000_000
        ):
            problems.append(("max_tokens", "an integer from 1"))
    args["max_tokens"] = max_tokens or DEFAULT_MAX_TOKENS
    for name, low, high in (("temperature", 0, 2), ("top_p", 0, 1)):
        value = _number(body, name, low, high, problems)
        if value is not None:
            args[name] = value
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            problems.append(("seed", "a non-negative integer"))
        else:
            args["seed"] = seed
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop
    if stops is not None:
        if (
            not isinstance(stops, list)
            or len(stops) > MAX_STOP
            or not all(isinstance(s, str) and s for s in stops)
        ):
            problems.append(("stop", f"a string or a list of up to {MAX_STOP} strings"))
        else:
            args["stop"] = stops
    if problems:
        raise InvalidArgument("; ".join(f"{f}: {d}" for f, d in problems), field_violations=problems)
    return ChatRequest(model, messages, stream, bool(options.get("include_usage")), args)  # type: ignore[arg-type]


def parse_embeddings(body: dict[str, Any]) -> tuple[str, list[str], str]:
    problems: list[tuple[str, str]] = []
    model = body.get("model")
    if not isinstance(model, str) or not model:
        problems.append(("model", "required: a model id from GET /v1/models"))
    texts = body.get("input")
    texts = [texts] if isinstance(texts, str) else texts
    if (
        not isinstance(texts, list)
        or not 1 <= len(texts) <= MAX_EMBED_INPUTS
        or not all(isinstance(t, str) for t in texts)
    ):
        problems.append(
            ("input", f"a string or a list of 1 to {MAX_EMBED_INPUTS} strings (token arrays: no)")
        )
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        problems.append(("encoding_format", "float or base64"))
    if problems:
        raise InvalidArgument("; ".join(f"{f}: {d}" for f, d in problems), field_violations=problems)
    return model, texts, encoding  # type: ignore[return-value]


# ------------------------------------------------------------------ errors in OpenAI's shape


def openai_error(exc: AgentMeshError) -> JSONResponse:
    status = exc.http_status if isinstance(exc, HttpError) else http_status_for(exc.code)
    violations = exc.field_violations if isinstance(exc, InvalidArgument) else []
    error = {
        "message": exc.message,
        "type": ERROR_TYPES.get(status, "api_error"),
        "param": violations[0][0] if violations else None,
        "code": exc.reason.lower() if exc.reason else None,
    }
    return JSONResponse({"error": error}, status_code=status)


def _endpoint(fn: Endpoint) -> Endpoint:
    @functools.wraps(fn)
    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)
        except AgentMeshError as exc:
            return openai_error(exc)
        except ClientDisconnect:
            return Response(status_code=499)
        except Exception as exc:
            return openai_error(unexpected_error(exc, f"{request.method} {request.url.path}"))

    return endpoint


def _step_failed(step: dict[str, Any], task: pb.Task) -> AgentMeshError:
    """A model call that failed: the request's fault (400), or the model's side (502)."""
    error = step.get("error") or {}
    reason = error.get("reason") or task.error.reason or "FAILED"
    message = error.get("message") or task.error.message or "the model call failed"
    if reason in CLIENT_FAULTS:
        return InvalidArgument(message, reason=reason)
    return HttpError(message, http_status=502, code=grpc.StatusCode.UNAVAILABLE, reason=reason)


# ------------------------------------------------------------------ endpoints


class OpenAIRoutes:
    """The three endpoints, on the gateway's client factory and body reader."""

    def __init__(
        self,
        client_for: Callable[[Request], AgentMeshClient],
        read_json: Callable[[Request], Awaitable[dict[str, Any]]],
        models_ttl_s: float = 5.0,
    ) -> None:
        self.client_for, self.read_json = client_for, read_json
        self.models_ttl_s = models_ttl_s
        self._models: tuple[float, list[Any]] = (0.0, [])

    async def _served(self, client: AgentMeshClient) -> list[Any]:
        # Kept a few seconds: not one more call per completion. (The submit checks the key.)
        at, models = self._models
        if time.monotonic() - at > self.models_ttl_s:
            models = await client.list_models()
            self._models = (time.monotonic(), models)
        return models

    async def _model(self, client: AgentMeshClient, name: str, kind: str) -> None:
        served = [m.name for m in await self._served(client) if m.kind == kind]
        if name not in served:
            raise NotFound(
                f"the model {name!r} is not served here (serving: {', '.join(served) or 'none'})",
                reason="MODEL_NOT_FOUND",
            )

    async def models(self, request: Request) -> Response:
        models = await self.client_for(request).list_models()
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": m.name, "object": "model", "created": 0, "owned_by": "agentmesh", "kind": m.kind}
                    for m in models
                ],
            }
        )

    async def chat(self, request: Request) -> Response:
        chat = parse_chat(await self.read_json(request))
        client = self.client_for(request)
        await self._model(client, chat.model, "generate")
        step = {
            "id": "chat",
            "tool": "infer",
            "args": {"model": chat.model, "messages": chat.messages, **chat.args},
        }
        task = await client.submit("pipeline", {"steps": [step]}, labels={**LABELS, "endpoint": "chat"})
        if chat.stream:
            return StreamingResponse(
                self._chunks(client, task, chat),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        done = await client.wait(task.id)
        text, finish = _completion(done)
        return JSONResponse(
            {
                "id": f"chatcmpl-{task.id}",
                "object": "chat.completion",
                "created": int(task.created_at),
                "model": chat.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish,
                        "logprobs": None,
                    }
                ],
                "usage": _usage(done),
            }
        )

    async def _chunks(
        self, client: AgentMeshClient, task: pb.Task, chat: ChatRequest
    ) -> AsyncIterator[bytes]:
        base = {
            "id": f"chatcmpl-{task.id}",
            "object": "chat.completion.chunk",
            "created": int(task.created_at),
            "model": chat.model,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            body = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            return f"data: {json.dumps(body, separators=(',', ':'))}\n\n".encode()

        ended = False
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for event in client.watch(task.id):
                if event.kind == "action.output":
                    data = json.loads(event.data_json)
                    if data.get("stream") == "tokens" and data.get("text"):
                        yield chunk({"content": data["text"]})
                elif event.kind == "state" and json.loads(event.data_json).get("terminal"):
                    ended = True
            done = await client.get(task.id)
            ended = True
            try:
                _, finish = _completion(done)
            except AgentMeshError as exc:
                yield f"data: {json.dumps(json.loads(openai_error(exc).body))}\n\n".encode()
            else:
                yield chunk({}, finish)
                if chat.include_usage:
                    body = {**base, "choices": [], "usage": _usage(done)}
                    yield f"data: {json.dumps(body, separators=(',', ':'))}\n\n".encode()
            yield b"data: [DONE]\n\n"
        finally:
            if not ended:  # the client went away: stop the generation and its bill
                # A task of its own: this one is being cancelled, and would cancel any await here.
                cancel = asyncio.ensure_future(_cancel(client, task.id))
                _cancelling.add(cancel)
                cancel.add_done_callback(_cancelling.discard)

    async def embeddings(self, request: Request) -> Response:
        model, texts, encoding = parse_embeddings(await self.read_json(request))
        client = self.client_for(request)
        await self._model(client, model, "embed")
        step = {"id": "embed", "tool": "embed", "args": {"model": model, "texts": texts}}
        task = await client.submit("pipeline", {"steps": [step]}, labels={**LABELS, "endpoint": "embeddings"})
        done = await client.wait(task.id)
        outcome = _step(done, "embed")
        vectors = (outcome.get("output") or {}).get("vectors", [])
        data = [
            {"object": "embedding", "index": i, "embedding": _encoded(vector, encoding)}
            for i, vector in enumerate(vectors)
        ]
        tokens = done.cost.tokens_in
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", _endpoint(self.models), methods=["GET"]),
            Route("/v1/chat/completions", _endpoint(self.chat), methods=["POST"]),
            Route("/v1/embeddings", _endpoint(self.embeddings), methods=["POST"]),
        ]


# Cancels of streams whose client went away, kept referenced until done (the loop holds tasks weakly).
_cancelling: set[asyncio.Task[None]] = set()


async def _cancel(client: AgentMeshClient, task_id: str) -> None:
    try:
        await client.cancel(task_id, reason="the OpenAI-API client went away")
    except AgentMeshError as exc:
        log.info("cancel of %s after a disconnect: %s", task_id, exc)


def _step(task: pb.Task, step_id: str) -> dict[str, Any]:
    steps = json.loads(task.result_json or "{}").get("steps", {})
    step = steps.get(step_id) or {}
    if task.state != pb.TASK_STATE_SUCCEEDED or step.get("status") != "ok":
        if task.state == pb.TASK_STATE_CANCELLED:
            raise Cancelled(f"task {task.id} was cancelled", reason="CANCELLED")
        raise _step_failed(step, task)
    return step


def _completion(task: pb.Task) -> tuple[str, str]:
    output = _step(task, "chat").get("output") or {}
    return str(output.get("text", "")), str(output.get("finish_reason") or "stop")


def _usage(task: pb.Task) -> dict[str, int]:
    prompt, completion = task.cost.tokens_in, task.cost.tokens_out
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
