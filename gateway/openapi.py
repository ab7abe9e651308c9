"""The HTTP API's OpenAPI 3.1 document, written by hand, and a dependency-free HTML rendering of it.

Hand-written because the API is small and its contract is fixed (DESIGN.md); a unit test checks that
every route of the app is described here and the other way round, so the two cannot drift apart.
"""

from __future__ import annotations

import html
import json
from typing import Any

from services.runtime.wire import STATE_VALUES

STATES = list(STATE_VALUES)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: str) -> dict[str, Any]:
    return {status: {"$ref": f"#/components/responses/{ERROR_RESPONSES[status][0]}"} for status in statuses}


# HTTP status -> (component name, description); the status table itself lives in gateway.errors.
ERROR_RESPONSES = {
    "400": (
        "BadRequest",
        "Invalid request: MALFORMED_JSON, JSON_TOO_DEEP or INVALID_ARGUMENT "
        "(details.field_violations lists every problem)",
    ),
    "401": ("Unauthenticated", "Missing or unknown API key (with `WWW-Authenticate: Bearer`)"),
    "403": ("PermissionDenied", "The key's tenant may not do this"),
    "404": ("NotFound", "No such task (or route)"),
    "409": ("Conflict", "FAILED_PRECONDITION (e.g. the task already finished), ALREADY_EXISTS or ABORTED"),
    "413": ("PayloadTooLarge", "The body is larger than the gateway's max_body_bytes"),
    "429": ("TooManyRequests", "RESOURCE_EXHAUSTED: queue full or rate limited; see `Retry-After`"),
    "503": ("Unavailable", "The coordinator cannot be reached"),
}

TASK_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The task's id",
}
IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 256},
    "description": "Same as the body's idempotency_key (they must agree if both are given)",
}
COMMON_ERRORS = ("401", "403", "503")
HTML_PAGE = {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}
SSE_EXAMPLE = (
    "id: 3\nevent: state\n"
    'data: {"task_id":"t1","seq":3,"ts":1.5,"kind":"state","data":{"state":"RUNNING"}}\n\n'
)

TIMELINE = {
    "type": "object",
    "properties": {
        "task": {"type": "object"},
        "truncated": {"type": "boolean"},
        "spans": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["kind", "name", "start", "end", "duration_ms", "status"],
                "properties": {
                    "kind": {"enum": ["queued", "decision", "attempt", "wait"]},
                    "name": {"type": "string", "description": "the action's key, or `decision N`"},
                    "start": {"type": "number", "description": "unix seconds"},
                    "end": {"type": "number"},
                    "duration_ms": {"type": "number"},
                    "status": {"type": "string"},
                    "reason": {"type": "string"},
                    "action_id": {"type": "string"},
                    "action_kind": {"type": "string"},
                    "attempt": {"type": "integer"},
                    "worker": {"type": "string", "description": "the address of the worker called"},
                    "queued_ms": {"type": "number", "description": "the wait for a coordinator slot"},
                    "cost": {"type": "object"},
                },
            },
        },
    },
}

# The OpenAI-compatible endpoints (gateway/openai_api.py) follow OpenAI's own API reference; the
# fields it honours are listed, others are ignored. Errors there have OpenAI's shape.
OPENAI_OBJECT = {"type": "object", "description": "As OpenAI's API reference describes it"}
OPENAI_CHAT = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string"},
        "messages": {"type": "array", "items": {"type": "object", "required": ["role", "content"]}},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "seed": {"type": "integer", "minimum": 0},
        "stop": {
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]
        },
        "n": {"const": 1},
    },
}
OPENAI_EMBED = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": {"type": "string"},
        "input": {
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 256}]
        },
        "encoding_format": {"enum": ["float", "base64"]},
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "agentmesh gateway",
        "version": "1",
        "description": (
            "HTTP/JSON and Server-Sent Events bridge to the agentmesh coordinator. Authenticate with "
            '`Authorization: Bearer <key>`. Errors are `{"error": {code, reason, message, details}}` with '
            "the HTTP status that matches the gRPC code: INVALID_ARGUMENT/OUT_OF_RANGE 400, UNAUTHENTICATED "
            "401, PERMISSION_DENIED 403, NOT_FOUND 404, FAILED_PRECONDITION/ALREADY_EXISTS/ABORTED 409, "
            "RESOURCE_EXHAUSTED 429, CANCELLED 499, INTERNAL/UNKNOWN/DATA_LOSS 500, UNIMPLEMENTED 501, "
            "UNAVAILABLE 503, DEADLINE_EXCEEDED 504; the gateway itself answers 413 for an oversized body, "
            "404 for an unknown route and 405 for a wrong method."
        ),
    },
    "security": [{"bearerAuth": []}],
    "paths": {
        "/v1/tasks": {
            "post": {
                "operationId": "submitTask",
                "summary": "Submit a task",
                "description": (
                    "Starts one run of an agent. Resubmitting with the same idempotency key "
                    "and the same body returns the existing task; a different body with that "
                    "key is 409."
                ),
                "parameters": [IDEMPOTENCY_HEADER],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SubmitTaskRequest")}},
                },
                "responses": {
                    "201": _json(_ref("Task"), "The task, as created (or as found, for a repeat)"),
                    **_errors("400", "404", "409", "413", "429", *COMMON_ERRORS),
                },
            },
            "get": {
                "operationId": "listTasks",
                "summary": "List tasks",
                "description": "The caller's tenant's tasks, newest first, one page at a time.",
                "parameters": [
                    {
                        "name": "state",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": STATES},
                        "description": "Only tasks in this state (case-insensitive); empty for every state",
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "next_cursor of the previous page",
                    },
                ],
                "responses": {
                    "200": _json(_ref("TaskList"), "One page of tasks"),
                    **_errors("400", *COMMON_ERRORS),
                },
            },
        },
        "/v1/tasks/{task_id}": {
            "get": {
                "operationId": "getTask",
                "summary": "Get a task",
                "parameters": [TASK_ID],
                "responses": {"200": _json(_ref("Task"), "The task"), **_errors("404", *COMMON_ERRORS)},
            },
        },
        "/v1/tasks/{task_id}/cancel": {
            "post": {
                "operationId": "cancelTask",
                "summary": "Cancel a task",
                "description": "Idempotent. The task ends CANCELLED once its in-flight actions stopped.",
                "parameters": [TASK_ID],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("CancelRequest")}},
                },
                "responses": {
                    "202": _json(_ref("Task"), "Cancellation recorded"),
                    **_errors("400", "404", "409", "413", *COMMON_ERRORS),
                },
            },
        },
        "/v1/tasks/{task_id}/resolve": {
            "post": {
                "operationId": "resolveTask",
                "summary": "Decide what happens to a held task",
                "description": "A task is held (`held: true`, WAITING, `error.reason` NONDETERMINISM) when "
                "its agent's code no longer matches its journal. `resume` goes on (on `version`, default "
                "the one it is pinned to); `reset` keeps its first `to_decision` decisions and goes on "
                "from there (the later ones' actions run again as the code asks); `fail` ends it FAILED.",
                "parameters": [TASK_ID],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ResolveRequest")}},
                },
                "responses": {
                    "200": _json(_ref("Task"), "The task, queued again or FAILED"),
                    **_errors("400", "404", "409", "413", *COMMON_ERRORS),
                },
            },
        },
        "/v1/tasks/{task_id}/input": {
            "post": {
                "operationId": "sendInput",
                "summary": "Send input to a task",
                "description": "Answers an `await_input` action (e.g. a pipeline `approval` step).",
                "parameters": [TASK_ID],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("InputRequest")}},
                },
                "responses": {
                    "202": _json(_ref("SendInputResponse"), "Input accepted"),
                    **_errors("400", "404", "409", "413", *COMMON_ERRORS),
                },
            },
        },
        "/v1/tasks/{task_id}/timeline": {
            "get": {
                "operationId": "getTaskTimeline",
                "summary": "Where the task's time went: its queue wait, each decision, each action attempt",
                "parameters": [TASK_ID],
                "responses": {
                    "200": _json(TIMELINE, "The task and its spans, in the order they ended"),
                    **_errors("404", *COMMON_ERRORS),
                },
            },
        },
        "/v1/tasks/{task_id}/events": {
            "get": {
                "operationId": "watchTask",
                "summary": "Follow a task's events (Server-Sent Events)",
                "description": (
                    "A `text/event-stream`. Each event has `id: <seq>`, `event: <kind>` and "
                    "`data: <Event JSON>`. Resumes after the larger of the `Last-Event-ID` header and "
                    "`?after=`. Comment lines keep an idle stream alive. The stream ends after the "
                    "task's terminal `state` event; a failure midway is sent as `event: error` with an "
                    "Error body. Auth and unknown-task errors come "
                    "before the stream, as ordinary JSON errors. 204 when the task has finished and nothing "
                    "is left after the resume point (this stops a browser's EventSource reconnecting)."
                ),
                "parameters": [
                    TASK_ID,
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0},
                        "description": "Send only events with a larger seq",
                    },
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0},
                        "description": "Set by EventSource on reconnect; same meaning as `after`",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The event stream",
                        "content": {
                            "text/event-stream": {"schema": {"type": "string"}, "example": SSE_EXAMPLE}
                        },
                    },
                    "204": {"description": "The task has finished; no event is left after the resume point"},
                    **_errors("400", "404", *COMMON_ERRORS),
                },
            },
        },
        "/v1/agents": {
            "get": {
                "operationId": "listAgents",
                "summary": "List the agents tasks can run",
                "responses": {"200": _json(_ref("AgentList"), "The agents"), **_errors(*COMMON_ERRORS)},
            },
        },
        "/v1/models": {
            "get": {
                "operationId": "openaiListModels",
                "summary": "OpenAI-compatible: the models the inference workers serve",
                "tags": ["OpenAI-compatible"],
                "responses": {
                    "200": _json(OPENAI_OBJECT, "`{object: list, data: [{id, object: model, kind}]}`"),
                    **_errors(*COMMON_ERRORS),
                },
            },
        },
        "/v1/chat/completions": {
            "post": {
                "operationId": "openaiChatCompletions",
                "summary": "OpenAI-compatible chat completion (`stream: true`: SSE chunks, `data: [DONE]`)",
                "tags": ["OpenAI-compatible"],
                "requestBody": {"required": True, "content": {"application/json": {"schema": OPENAI_CHAT}}},
                "responses": {
                    "200": {
                        "description": "A chat.completion (id `chatcmpl-<task id>`), or its chunks as SSE",
                        "content": {
                            "application/json": {"schema": OPENAI_OBJECT},
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors("400", "404", "413", "429", *COMMON_ERRORS),
                },
            },
        },
        "/v1/embeddings": {
            "post": {
                "operationId": "openaiEmbeddings",
                "summary": "OpenAI-compatible embeddings (encoding_format float or base64)",
                "tags": ["OpenAI-compatible"],
                "requestBody": {"required": True, "content": {"application/json": {"schema": OPENAI_EMBED}}},
                "responses": {
                    "200": _json(OPENAI_OBJECT, "`{object: list, data: [{embedding, index}], usage}`"),
                    **_errors("400", "404", "413", "429", *COMMON_ERRORS),
                },
            },
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Readiness: the coordinator answers its gRPC health check",
                "security": [],
                "responses": {
                    "200": _json({"type": "object", "properties": {"status": {"const": "ok"}}}, "Ready"),
                    "503": _json(
                        {
                            "type": "object",
                            "properties": {"status": {"type": "string"}, "coordinator": {"type": "string"}},
                        },
                        "Not ready: the coordinator is down or not serving, or the gateway drains",
                    ),
                },
            },
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
            },
        },
        "/docs": {
            "get": {
                "operationId": "docs",
                "summary": "This document, as a web page",
                "security": [],
                "responses": {"200": HTML_PAGE},
            },
        },
        "/": {
            "get": {
                "operationId": "dashboard",
                "summary": "The web dashboard (asks for an API key and keeps it in the browser)",
                "security": [],
                "responses": {"200": HTML_PAGE},
            },
        },
    },
    "components": {
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key; keys map to tenants",
            }
        },
        "responses": {
            name: _json(_ref("Error"), description) for name, description in ERROR_RESPONSES.values()
        },
        "schemas": {
            "SubmitTaskRequest": {
                "type": "object",
                "required": ["agent", "input"],
                "additionalProperties": False,
                "properties": {
                    "agent": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 128,
                        "description": "Agent name (see /v1/agents)",
                    },
                    "input": {"description": "Any JSON value; the agent's input"},
                    "priority": {"type": "integer", "default": 0, "description": "Higher runs first (int32)"},
                    "budget": {
                        "oneOf": [{"type": "number", "minimum": 0, "description": "USD"}, _ref("Budget")],
                        "description": "Spend limit; past it the task fails with BUDGET_EXCEEDED",
                    },
                    "deadline_s": {
                        "type": "number",
                        "minimum": 0,
                        "description": "Seconds from now; 0: none",
                    },
                    "idempotency_key": {"type": "string", "maxLength": 256},
                    "labels": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "maxProperties": 64,
                    },
                },
            },
            "Budget": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "usd": {"type": "number", "minimum": 0},
                    "tokens": {"type": "integer", "minimum": 0},
                },
                "description": "Zero means unlimited",
            },
            "CancelRequest": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"reason": {"type": "string", "maxLength": 1024}},
            },
            "ResolveRequest": {
                "type": "object",
                "required": ["action"],
                "additionalProperties": False,
                "properties": {
                    "action": {"type": "string", "enum": ["resume", "reset", "fail"]},
                    "version": {"type": "string", "maxLength": 128, "description": "the version to go on on"},
                    "to_decision": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": 2147483647,
                        "description": "reset: how many decisions to keep",
                    },
                },
            },
            "InputRequest": {
                "type": "object",
                "required": ["data"],
                "additionalProperties": False,
                "properties": {"data": {"description": "Any JSON value"}},
            },
            "Cost": {
                "type": "object",
                "properties": {
                    "tokens_in": {"type": "integer"},
                    "tokens_out": {"type": "integer"},
                    "gpu_ms": {"type": "number"},
                    "cpu_ms": {"type": "number"},
                    "wall_ms": {"type": "number"},
                    "usd": {"type": "number"},
                },
            },
            "TaskError": {
                "type": "object",
                "properties": {"reason": {"type": "string"}, "message": {"type": "string"}, "details": {}},
            },
            "Task": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "tenant": {"type": "string"},
                    "agent": {"type": "string"},
                    "input": {"description": "The task's input"},
                    "priority": {"type": "integer"},
                    "budget": _ref("Budget"),
                    "deadline": {"type": ["number", "null"], "description": "Unix seconds"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "idempotency_key": {"type": ["string", "null"]},
                    "parent_id": {"type": ["string", "null"]},
                    "state": {"type": "string", "enum": STATES},
                    "result": {"description": "The agent's result once SUCCEEDED"},
                    "error": {"oneOf": [_ref("TaskError"), {"type": "null"}]},
                    "cost": _ref("Cost"),
                    "created_at": {"type": "number"},
                    "updated_at": {"type": "number"},
                    "finished_at": {"type": ["number", "null"]},
                    "last_seq": {"type": "integer", "description": "seq of the task's newest event"},
                    "cancel_requested": {"type": "boolean"},
                    "decisions": {"type": "integer", "description": "Planner decisions taken (checkpoints)"},
                    "input_prompt": {"type": ["string", "null"], "description": "While WAITING for input"},
                    "agent_version": {
                        "type": ["string", "null"],
                        "description": "The agent version the task runs on (pinned when it starts)",
                    },
                    "held": {
                        "type": "boolean",
                        "description": "WAITING for an operator: its agent's code no longer matches its "
                        "journal (see error; POST /v1/tasks/{id}/resolve)",
                    },
                },
            },
            "TaskList": {
                "type": "object",
                "properties": {
                    "tasks": {"type": "array", "items": _ref("Task")},
                    "next_cursor": {"type": ["string", "null"], "description": "null on the last page"},
                },
            },
            "SendInputResponse": {
                "type": "object",
                "properties": {
                    "delivered": {"type": "boolean", "description": "false: queued for the task's next wait"},
                    "task": _ref("Task"),
                },
            },
            "Event": {
                "type": "object",
                "properties": {
                    "task_id": {"type": "string"},
                    "seq": {"type": "integer", "description": "Per task, dense from 1"},
                    "ts": {"type": "number"},
                    "kind": {
                        "type": "string",
                        "description": "state | decision | action.started | "
                        "action.output | action.finished | "
                        "input.requested | cost | log | agent.<kind> (an SDK agent's ctx.emit)",
                    },
                    "data": {},
                },
            },
            "AgentList": {
                "type": "object",
                "properties": {
                    "agents": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "description"],
                            "properties": {
                                "name": {"type": "string"},
                                "description": {"type": "string"},
                                "version": {
                                    "type": "string",
                                    "description": "SDK agents: the newest version served, which new "
                                    "tasks run on",
                                },
                                "input_schema": {
                                    "type": "object",
                                    "description": "SDK agents: the JSON Schema input is checked against",
                                },
                                "versions": {
                                    "type": "array",
                                    "description": "Every version served now, newest first, with the "
                                    "workers serving it (`planner`: the mesh's own)",
                                    "items": {
                                        "type": "object",
                                        "required": ["version", "workers"],
                                        "properties": {
                                            "version": {"type": "string"},
                                            "workers": {"type": "array", "items": {"type": "string"}},
                                            "input_schema": {"type": "object"},
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
            "Error": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "reason", "message", "details"],
                        "properties": {
                            "code": {
                                "type": "string",
                                "description": "gRPC status code name, e.g. NOT_FOUND",
                            },
                            "reason": {"type": "string", "description": "Stable UPPER_SNAKE reason"},
                            "message": {"type": "string"},
                            "details": {
                                "type": "object",
                                "description": "e.g. retry_after_s, field_violations, correlation_id",
                            },
                        },
                    }
                },
            },
        },
    },
}


# --- HTML rendering --------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value))


def _type_html(schema: dict[str, Any]) -> str:
    """A schema as a short readable type: `Task`, `array of Task`, `map of string`, `number | Budget`."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{_e(name)}">{_e(name)}</a>'
    if "oneOf" in schema:
        return " | ".join(_type_html(s) for s in schema["oneOf"])
    if "const" in schema:
        return f"<code>{_e(json.dumps(schema['const']))}</code>"
    kind = schema.get("type")
    if kind == "array":
        return "array of " + _type_html(schema.get("items", {}))
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return "map of " + _type_html(schema["additionalProperties"])
    if "enum" in schema:
        return " | ".join(f"<code>{_e(v)}</code>" for v in schema["enum"])
    if isinstance(kind, list):
        return " | ".join(_e(k) for k in kind)
    return _e(kind or "any JSON")


def _constraints(schema: dict[str, Any]) -> str:
    keys = ("minimum", "maximum", "minLength", "maxLength", "maxProperties", "default")
    return ", ".join(f"{k} {json.dumps(schema[k])}" for k in keys if k in schema)


def _schema_table(schema: dict[str, Any]) -> str:
    props = schema.get("properties")
    if not props:
        return f"<p>{_type_html(schema)}</p>"
    required = set(schema.get("required", ()))
    rows = "".join(
        f"<tr><td><code>{_e(name)}</code>{' <b>*</b>' if name in required else ''}</td>"
        f"<td>{_type_html(sub)}</td><td>{_e(sub.get('description', ''))}"
        f"{' <i>(' + _e(_constraints(sub)) + ')</i>' if _constraints(sub) else ''}</td></tr>"
        for name, sub in props.items()
    )
    return f"<table><tr><th>field</th><th>type</th><th>notes</th></tr>{rows}</table>"


def _resolve_response(doc: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in response:
        return doc["components"]["responses"][response["$ref"].rsplit("/", 1)[-1]]
    return response


def _operation_html(doc: dict[str, Any], method: str, path: str, op: dict[str, Any]) -> str:
    parts = [
        f'<section class="op" id="{_e(op.get("operationId", ""))}">',
        f'<h3><span class="m m-{_e(method)}">{_e(method.upper())}</span> <code>{_e(path)}</code></h3>',
        f"<p><b>{_e(op.get('summary', ''))}</b></p>",
    ]
    if op.get("description"):
        parts.append(f"<p>{_e(op['description'])}</p>")
    if op.get("security") == []:
        parts.append("<p><i>No API key needed.</i></p>")
    if op.get("parameters"):
        rows = "".join(
            f"<tr><td><code>{_e(p['name'])}</code>{' <b>*</b>' if p.get('required') else ''}</td>"
            f"<td>{_e(p['in'])}</td><td>{_type_html(p.get('schema', {}))}</td>"
            f"<td>{_e(p.get('description', ''))}</td></tr>"
            for p in op["parameters"]
        )
        parts.append(
            f"<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>type</th><th>notes</th></tr>"
            f"{rows}</table>"
        )
    body = op.get("requestBody")
    if body:
        schema = body["content"]["application/json"]["schema"]
        parts.append(
            f"<h4>Request body{' (optional)' if not body.get('required') else ''}: {_type_html(schema)}</h4>"
        )
    rows = []
    for status, response in op.get("responses", {}).items():
        response = _resolve_response(doc, response)
        content = response.get("content", {})
        kinds = ", ".join(
            f"{_e(ctype)}: {_type_html(media.get('schema', {}))}" for ctype, media in content.items()
        )
        rows.append(
            f"<tr><td>{_e(status)}</td><td>{_e(response.get('description', ''))}</td><td>{kinds}</td></tr>"
        )
    parts.append(
        f"<h4>Responses</h4><table><tr><th>status</th><th>meaning</th><th>body</th></tr>"
        f"{''.join(rows)}</table></section>"
    )
    return "".join(parts)


STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1000px;padding:1em 2em;color:#222}
code{font:13px ui-monospace,monospace;background:#f3f3f3;padding:1px 4px;border-radius:3px}
table{border-collapse:collapse;margin:.4em 0 1em;width:100%}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#fafafa}.op{border-top:2px solid #eee;padding-top:.5em}
.m{display:inline-block;min-width:4em;text-align:center;color:#fff;border-radius:3px;padding:0 6px;
font-size:13px}
.m-get{background:#2f7d32}.m-post{background:#1565c0}a{color:#1565c0}
"""


def render_html(doc: dict[str, Any] = DOCUMENT) -> str:
    """The document as one self-contained page: an index, each operation, each schema. No scripts."""
    ops = [(method, path, op) for path, item in doc["paths"].items() for method, op in item.items()]
    index = "".join(
        f'<tr><td><span class="m m-{_e(m)}">{_e(m.upper())}</span></td>'
        f'<td><a href="#{_e(op.get("operationId", ""))}"><code>{_e(p)}</code></a></td>'
        f"<td>{_e(op.get('summary', ''))}</td></tr>"
        for m, p, op in ops
    )
    schemas = "".join(
        f'<section id="schema-{_e(name)}"><h3>{_e(name)}</h3>'
        f"{'<p>' + _e(schema['description']) + '</p>' if schema.get('description') else ''}"
        f"{_schema_table(schema)}</section>"
        for name, schema in doc["components"]["schemas"].items()
    )
    info = doc["info"]
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{_e(info['title'])}: API</title><style>{STYLE}</style></head><body>"
        f"<h1>{_e(info['title'])} <small>API v{_e(info['version'])}</small></h1>"
        f"<p>{_e(info.get('description', ''))}</p>"
        '<p><a href="/openapi.json">openapi.json</a> &middot; <a href="/">dashboard</a></p>'
        f"<h2>Endpoints</h2><table>{index}</table>"
        f"{''.join(_operation_html(doc, m, p, op) for m, p, op in ops)}"
        f"<h2>Schemas</h2>{schemas}</body></html>"
    )
