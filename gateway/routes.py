"""HTTP endpoints: each translates one request into one coordinator call and the answer into JSON.

No business rules live here: the coordinator decides (auth included); this module only validates
the shape of requests (`gateway.validation`), forwards the caller's key, and maps errors
(`gateway.errors`). Every endpoint answers JSON errors, never a bare 500 page.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agentmesh.client import AgentMeshClient
from gateway import openapi, sse
from gateway.config import GatewayConfig
from gateway.errors import HttpError, error_response, payload_too_large, unexpected_error
from gateway.openai_api import OpenAIRoutes
from gateway.upstream import Upstream
from gateway.validation import (
    bearer_key,
    parse_json_object,
    resume_after,
    validate_cancel,
    validate_input,
    validate_list_query,
    validate_resolve,
    validate_submit,
)
from services.runtime.errors import AgentMeshError
from services.runtime.logs import current_task_id
from services.runtime.wire import TERMINAL_STATES, task_to_dict, timeline_to_dict

log = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass
class GatewayState:
    config: GatewayConfig
    upstream: Upstream
    dashboard_html: str
    docs_html: str


def _state(request: Request) -> GatewayState:
    return request.app.state.gateway


def api(fn: Endpoint) -> Endpoint:
    """Wrap an endpoint so that every failure becomes a JSON error with the right status."""

    @functools.wraps(fn)
    async def endpoint(request: Request) -> Response:
        task_id = request.path_params.get("task_id")
        if task_id:
            current_task_id.set(task_id)  # log lines of this request carry the task id
        try:
            return await fn(request)
        except AgentMeshError as exc:
            return error_response(exc)
        except ClientDisconnect:
            # Nobody is left to read the answer; 499 only shows up in the metrics and access log.
            return Response(status_code=499)
        except Exception as exc:
            return error_response(unexpected_error(exc, f"{request.method} {request.url.path}"))

    return endpoint


def _client(request: Request) -> AgentMeshClient:
    return _state(request).upstream.client(bearer_key(request.headers.get("authorization")))


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes: first by Content-Length, then while reading
    (a chunked body has no length up front), so an oversized body is never held in memory whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise payload_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise payload_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_object(request: Request, *, allow_empty: bool = False) -> dict[str, Any]:
    config = _state(request).config
    raw = await _read_body(request, config.max_body_bytes)
    return parse_json_object(raw, config.max_json_depth, allow_empty=allow_empty)


# --- tasks -----------------------------------------------------------------------------------------


@api
async def submit_task(request: Request) -> Response:
    body = await _json_object(request)
    spec = validate_submit(body, request.headers.get("idempotency-key"))
    task = await _client(request).submit(
        spec.agent,
        None,
        input_json=spec.input_json,
        priority=spec.priority,
        budget_usd=spec.budget_usd,
        budget_tokens=spec.budget_tokens,
        deadline_s=spec.deadline_s,
        idempotency_key=spec.idempotency_key,
        labels=spec.labels,
    )
    return JSONResponse(task_to_dict(task), status_code=201, headers={"Location": f"/v1/tasks/{task.id}"})


@api
async def list_tasks(request: Request) -> Response:
    query = validate_list_query(request.query_params)
    reply = await _client(request).list(state=query.state, limit=query.limit, cursor=query.cursor)
    tasks = [task_to_dict(t) for t in reply.tasks]
    return JSONResponse({"tasks": tasks, "next_cursor": reply.next_cursor or None})


@api
async def get_task(request: Request) -> Response:
    task = await _client(request).get(request.path_params["task_id"])
    return JSONResponse(task_to_dict(task))


@api
async def cancel_task(request: Request) -> Response:
    reason = validate_cancel(await _json_object(request, allow_empty=True))
    task = await _client(request).cancel(request.path_params["task_id"], reason)
    return JSONResponse(task_to_dict(task), status_code=202)


@api
async def resolve_task(request: Request) -> Response:
    how = validate_resolve(await _json_object(request))
    task_id = request.path_params["task_id"]
    task = await _client(request).resolve(task_id, how.action, how.version, how.to_decision)
    return JSONResponse(task_to_dict(task))


@api
async def send_input(request: Request) -> Response:
    data = validate_input(await _json_object(request))
    reply = await _client(request).send_input(request.path_params["task_id"], data)
    return JSONResponse({"delivered": reply.delivered, "task": task_to_dict(reply.task)}, status_code=202)


@api
async def task_timeline(request: Request) -> Response:
    return JSONResponse(timeline_to_dict(await _client(request).timeline(request.path_params["task_id"])))


@api
async def task_events(request: Request) -> Response:
    task_id = request.path_params["task_id"]
    after = resume_after(request.headers.get("last-event-id"), request.query_params.get("after"))
    client = _client(request)
    # Auth and existence are checked before the first byte: once the 200 and the stream headers are
    # out, an error could only be reported in-band, which EventSource clients treat as "retry".
    task = await client.get(task_id)
    if task.state in TERMINAL_STATES and after >= task.last_seq:
        # Nothing will ever follow; 204 is the one answer that stops an EventSource reconnecting.
        return Response(status_code=204)
    if request.method == "HEAD":
        # Starlette serves HEAD on every GET route; a stream nobody reads would hold a watch open.
        return Response(status_code=200, media_type="text/event-stream", headers=sse.STREAM_HEADERS)
    state = _state(request)
    stream = sse.event_stream(
        client.watch(task_id, after),
        keepalive_s=state.config.sse_keepalive_s,
        draining=state.upstream.draining,
        task_id=task_id,
    )
    return StreamingResponse(stream, media_type="text/event-stream", headers=sse.STREAM_HEADERS)


async def tasks_collection(request: Request) -> Response:
    # One route for both methods, so a 405 on /v1/tasks names both in its Allow header.
    return await (submit_task(request) if request.method == "POST" else list_tasks(request))


@api
async def list_agents(request: Request) -> Response:
    reply = await _client(request).list_agents()
    return JSONResponse({"agents": [_agent_info(a) for a in reply.agents]})


def _agent_info(agent: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"name": agent.name, "description": agent.description}
    if agent.version:
        info["version"] = agent.version
    if agent.input_schema_json:
        info["input_schema"] = json.loads(agent.input_schema_json)
    info["versions"] = []
    for served in agent.versions:
        entry: dict[str, Any] = {"version": served.version, "workers": list(served.workers)}
        if served.input_schema_json:
            entry["input_schema"] = json.loads(served.input_schema_json)
        info["versions"].append(entry)
    return info


# --- operations ------------------------------------------------------------------------------------


@api
async def healthz(request: Request) -> Response:
    state = _state(request)
    if state.upstream.draining.is_set():
        return JSONResponse({"status": "draining"}, status_code=503)
    ok, detail = await state.upstream.health(state.config.health_timeout_s)
    if ok:
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "unavailable", "coordinator": detail}, status_code=503)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def openapi_json(request: Request) -> Response:
    return JSONResponse(openapi.DOCUMENT)


async def docs(request: Request) -> Response:
    return HTMLResponse(_state(request).docs_html)


async def dashboard(request: Request) -> Response:
    return HTMLResponse(_state(request).dashboard_html, headers={"Cache-Control": "no-cache"})


OPENAI = OpenAIRoutes(_client, _json_object)

ROUTES = [
    *OPENAI.routes(),
    Route("/", dashboard, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
    Route("/v1/agents", list_agents, methods=["GET"]),
    Route("/v1/tasks", tasks_collection, methods=["GET", "POST"]),
    Route("/v1/tasks/{task_id}", get_task, methods=["GET"]),
    Route("/v1/tasks/{task_id}/cancel", cancel_task, methods=["POST"]),
    Route("/v1/tasks/{task_id}/resolve", resolve_task, methods=["POST"]),
    Route("/v1/tasks/{task_id}/input", send_input, methods=["POST"]),
    Route("/v1/tasks/{task_id}/events", task_events, methods=["GET"]),
    Route("/v1/tasks/{task_id}/timeline", task_timeline, methods=["GET"]),
]


# --- router-level errors ---------------------------------------------------------------------------


async def http_exception(request: Request, exc: Exception) -> Response:
    """404 (no route) and 405 (route, wrong method) from Starlette's router, as JSON errors."""
    if not isinstance(exc, HTTPException):
        return await server_error(request, exc)
    if exc.status_code == 404:
        error = HttpError(
            f"no route for {request.url.path}",
            http_status=404,
            code=grpc.StatusCode.NOT_FOUND,
            reason="ROUTE_NOT_FOUND",
        )
    elif exc.status_code == 405:
        error = HttpError(
            f"{request.method} is not allowed on {request.url.path}",
            http_status=405,
            code=grpc.StatusCode.UNIMPLEMENTED,
            reason="METHOD_NOT_ALLOWED",
            headers=dict(exc.headers or {}),
        )
    else:
        error = HttpError(
            str(exc.detail),
            http_status=exc.status_code,
            code=grpc.StatusCode.UNKNOWN,
            reason="HTTP_ERROR",
            headers=dict(exc.headers or {}),
        )
    return error_response(error)


async def server_error(request: Request, exc: Exception) -> Response:
    """Last resort behind `api`: anything that escaped still gets a JSON 500 with a correlation id."""
    return error_response(unexpected_error(exc, f"{request.method} {request.url.path}"))
