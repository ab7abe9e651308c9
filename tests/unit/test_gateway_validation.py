"""Request validation at the HTTP edge: pure functions first, then the app itself refusing bad input
before it would call the coordinator (which here is a closed port: nothing is mocked)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from typing import Any

import httpx
import pytest

from gateway import create_app
from gateway.config import GatewayConfig
from gateway.main import parse_listen_addr
from gateway.openapi import DOCUMENT
from gateway.routes import ROUTES
from gateway.sse import event_stream, format_event
from gateway.validation import (
    bearer_key,
    json_depth_exceeds,
    parse_json,
    parse_json_object,
    resume_after,
    validate_cancel,
    validate_input,
    validate_list_query,
    validate_submit,
)
from protos.agentmesh.v1 import common_pb2
from services.runtime.config import load
from services.runtime.errors import InvalidArgument, Unauthenticated


def violations(exc_info: pytest.ExceptionInfo[InvalidArgument]) -> dict[str, str]:
    return dict(exc_info.value.field_violations)


# --- JSON parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"{bad",
        b'{"a": 1,}',
        b"{'a': 1}",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"a": 1e999}',
        b"\xff\xfe\xfd",
        b'{"a": ' + b"9" * 5000 + b"}",
        b'{"a": 1} trailing',
    ],
)
def test_malformed_json_is_refused_with_its_reason(raw):
    with pytest.raises(InvalidArgument) as exc_info:
        parse_json(raw, 64)
    assert exc_info.value.reason == "MALFORMED_JSON"


@pytest.mark.parametrize("levels", [65, 1_000, 100_000])
def test_deep_nesting_is_refused_not_a_crash(levels):
    for raw in (b"[" * levels + b"]" * levels, b'{"a":' * levels + b"1" + b"}" * levels):
        with pytest.raises(InvalidArgument) as exc_info:
            parse_json(raw, 64)
        assert exc_info.value.reason == "JSON_TOO_DEEP"
        assert "64" in exc_info.value.message


def test_nesting_up_to_the_limit_is_fine():
    assert parse_json(b"[" * 64 + b"]" * 64, 64) is not None
    assert not json_depth_exceeds({"a": [1, {"b": []}]}, 4)  # object, array, object, array
    assert json_depth_exceeds({"a": [1, {"b": []}]}, 3)
    assert not json_depth_exceeds("scalar", 0)


def test_body_must_be_an_object():
    with pytest.raises(InvalidArgument) as exc_info:
        parse_json_object(b"[1, 2]", 64)
    assert "array" in exc_info.value.message
    assert parse_json_object(b"", 64, allow_empty=True) == {}
    assert parse_json_object('  {"x": "é"} ', 64) == {"x": "é"}


# --- POST /v1/tasks --------------------------------------------------------------------------------


def test_submit_minimal_and_full():
    spec = validate_submit({"agent": "pipeline", "input": {"steps": []}})
    assert (spec.agent, json.loads(spec.input_json)) == ("pipeline", {"steps": []})
    assert (spec.priority, spec.budget_usd, spec.labels, spec.idempotency_key) == (0, 0.0, {}, "")
    full = validate_submit(
        {
            "agent": "codegen",
            "input": "write fizzbuzz",
            "priority": -3,
            "budget": {"usd": 0.5, "tokens": 1000},
            "deadline_s": 60,
            "idempotency_key": "k-1",
            "labels": {"team": "ml"},
        }
    )
    assert full.priority == -3 and full.budget_usd == 0.5 and full.budget_tokens == 1000
    assert full.deadline_s == 60.0 and full.idempotency_key == "k-1" and full.labels == {"team": "ml"}
    assert json.loads(full.input_json) == "write fizzbuzz"


def test_input_may_be_any_json_even_null_but_must_be_present():
    assert validate_submit({"agent": "a", "input": None}).input_json == "null"
    with pytest.raises(InvalidArgument) as exc_info:
        validate_submit({"agent": "a"})
    assert "input" in violations(exc_info)


def test_budget_as_a_number_means_usd():
    spec = validate_submit({"agent": "a", "input": 1, "budget": 2})
    assert (spec.budget_usd, spec.budget_tokens) == (2.0, 0)


def test_every_bad_field_is_reported_at_once():
    with pytest.raises(InvalidArgument) as exc_info:
        validate_submit(
            {
                "priority": "high",
                "labels": {"team": 7},
                "budget": {"usd": -1, "gpus": 2},
                "deadline_s": "soon",
                "idempotency_key": 5,
                "priorty": 1,
            }
        )
    found = violations(exc_info)
    assert exc_info.value.reason == "INVALID_ARGUMENT"
    assert set(found) == {
        "agent",
        "input",
        "priority",
        "labels.team",
        "budget.usd",
        "budget.gpus",
        "deadline_s",
        "idempotency_key",
        "priorty",
    }
    assert "integer" in found["priority"] and "unknown" in found["priorty"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("agent", ""),
        ("agent", "   "),
        ("agent", 3),
        ("agent", "x" * 200),
        ("priority", True),
        ("priority", 1.5),
        ("priority", 2**31),
        ("priority", [1]),
        ("budget", "1"),
        ("budget", True),
        ("budget", {"tokens": -1}),
        ("budget", {"tokens": 1.5}),
        ("deadline_s", -1),
        ("deadline_s", False),
        ("labels", ["a"]),
        ("labels", "team=ml"),
        ("labels", {"": "x"}),
        ("labels", {"k": None}),
        ("labels", {f"k{i}": "v" for i in range(65)}),
        ("idempotency_key", "k" * 300),
    ],
)
def test_wrong_types_and_ranges(field, value):
    body: dict[str, Any] = {"agent": "a", "input": {}, field: value}
    with pytest.raises(InvalidArgument) as exc_info:
        validate_submit(body)
    assert any(name == field or name.startswith(field + ".") for name in violations(exc_info))


def test_idempotency_key_header():
    assert validate_submit({"agent": "a", "input": 1}, " hdr-1 ").idempotency_key == "hdr-1"
    both = validate_submit({"agent": "a", "input": 1, "idempotency_key": "same"}, "same")
    assert both.idempotency_key == "same"
    with pytest.raises(InvalidArgument) as exc_info:
        validate_submit({"agent": "a", "input": 1, "idempotency_key": "one"}, "other")
    assert "idempotency_key" in violations(exc_info)
    with pytest.raises(InvalidArgument):
        validate_submit({"agent": "a", "input": 1}, "  ")


# --- the other bodies and queries ------------------------------------------------------------------


def test_cancel_and_input_bodies():
    assert validate_cancel({}) == ""
    assert validate_cancel({"reason": "user asked"}) == "user asked"
    with pytest.raises(InvalidArgument):
        validate_cancel({"reason": 1})
    with pytest.raises(InvalidArgument):
        validate_cancel({"why": "x"})
    assert validate_input({"data": None}) is None
    assert validate_input({"data": {"approved": True}}) == {"approved": True}
    with pytest.raises(InvalidArgument) as exc_info:
        validate_input({"value": 1})
    assert set(violations(exc_info)) == {"data", "value"}


def test_list_query():
    assert validate_list_query({}) == validate_list_query({"state": "", "limit": "", "cursor": ""})
    query = validate_list_query({"state": "running", "limit": "10", "cursor": "abc"})
    assert (query.state, query.limit, query.cursor) == (common_pb2.TASK_STATE_RUNNING, 10, "abc")
    assert validate_list_query({"state": "Task_State_Failed"}).state == common_pb2.TASK_STATE_FAILED
    for bad in (
        {"state": "DONE"},
        {"state": "UNSPECIFIED"},
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"limit": "-1"},
        {"limit": "1_0"},
        {"cursor": "c" * 2000},
    ):
        with pytest.raises(InvalidArgument):
            validate_list_query(bad)


def test_resume_position_takes_the_larger_of_header_and_query():
    assert resume_after(None, None) == 0
    assert resume_after("7", None) == 7
    assert resume_after("7", "3") == 7
    assert resume_after("2", "9") == 9
    assert resume_after("", " ") == 0
    for header, query in (("x", None), (None, "-1"), (None, "1.5"), ("9" * 40, None)):
        with pytest.raises(InvalidArgument):
            resume_after(header, query)


def test_bearer_key():
    assert bearer_key(None) is None
    assert bearer_key("Bearer abc123") == "abc123"
    assert bearer_key("bearer   abc123 ") == "abc123"
    for bad in ("", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "abc123", "Bearer a b", "Bearer ké"):
        with pytest.raises(Unauthenticated):
            bearer_key(bad)


# --- config and entry point ------------------------------------------------------------------------


def test_config_flags_and_environment():
    config = load(GatewayConfig, ["--max-body-bytes", "2048"], environ={"AGENTMESH_SSE_KEEPALIVE_S": "2.5"})
    assert config.max_body_bytes == 2048 and config.sse_keepalive_s == 2.5
    assert GatewayConfig().max_body_bytes == 1024 * 1024 and GatewayConfig().max_json_depth == 64


def test_parse_listen_addr():
    assert parse_listen_addr("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen_addr(":9000") == ("0.0.0.0", 9000)
    assert parse_listen_addr("[::1]:8080") == ("::1", 8080)
    for bad in ("8080", "host:", "host:http", "host:70000"):
        with pytest.raises(ValueError):
            parse_listen_addr(bad)


# --- SSE framing -----------------------------------------------------------------------------------


def make_event(seq: int, kind: str = "log", data: Any = None) -> common_pb2.Event:
    return common_pb2.Event(task_id="t1", seq=seq, ts=1.0, kind=kind, data_json=json.dumps(data))


def test_event_frame_is_one_line_of_json_with_its_seq_as_id():
    frame = format_event(make_event(3, "action.output", {"text": "line 1\nline 2\r\n"})).decode()
    lines = frame.split("\n")
    assert lines[:2] == ["id: 3", "event: action.output"]
    assert lines[2].startswith("data: ") and lines[3:] == ["", ""]
    assert json.loads(lines[2][6:])["data"] == {"text": "line 1\nline 2\r\n"}
    assert format_event(make_event(1, "bad\nkind")).decode().split("\n")[1] == "event: bad kind"


def test_event_stream_keeps_alive_and_closes_its_source_when_the_reader_leaves():
    closed = asyncio.Event()

    async def source():
        try:
            yield make_event(1)
            await asyncio.sleep(3600)  # a task that never finishes
        finally:
            closed.set()

    async def scenario() -> list[bytes]:
        frames: list[bytes] = []

        held = source()  # as the gRPC machinery does: garbage collection must not be what closes it

        async def read() -> None:
            stream = event_stream(held, keepalive_s=0.05, draining=asyncio.Event(), task_id="t1")
            async for frame in stream:
                frames.append(frame)

        reader = asyncio.ensure_future(read())
        await asyncio.sleep(0.3)
        reader.cancel()  # what Starlette does when the HTTP client disconnects
        await asyncio.gather(reader, return_exceptions=True)
        await asyncio.wait_for(closed.wait(), 2)
        return frames

    frames = asyncio.run(scenario())
    assert frames[0].startswith(b"retry: ")
    assert frames[1].startswith(b"id: 1\n")
    assert frames.count(b": keepalive\n\n") >= 2


def test_event_stream_closes_its_source_when_a_read_lands_as_the_reader_leaves():
    # The race that leaked watches: the pending read completes in the same loop turn in which the
    # response is cancelled, leaving the source parked at its `yield` unless the stream closes it.
    gate, closed = asyncio.Event(), asyncio.Event()

    async def source():
        try:
            await gate.wait()
            yield make_event(1)
            await asyncio.sleep(3600)
        finally:
            closed.set()

    async def scenario() -> bool:
        held = source()  # as the gRPC machinery does: garbage collection must not be what closes it
        stream = event_stream(held, keepalive_s=10, draining=asyncio.Event(), task_id="t1")

        async def read() -> None:
            async for _ in stream:
                pass

        reader = asyncio.ensure_future(read())
        await asyncio.sleep(0.05)  # the reader now waits on the pending read
        gate.set()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        try:
            await asyncio.wait_for(closed.wait(), 1)
        except TimeoutError:
            return False
        return True

    assert asyncio.run(scenario())


def test_event_stream_ends_with_the_source_and_on_drain():
    async def finite():
        yield make_event(1)
        yield make_event(2, "state", {"state": "SUCCEEDED"})

    async def endless():
        yield make_event(1)
        await asyncio.sleep(3600)

    async def collect(events, draining: asyncio.Event) -> list[bytes]:
        stream = event_stream(events, keepalive_s=10, draining=draining, task_id="t1")
        return [frame async for frame in stream]

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        done = await asyncio.wait_for(collect(finite(), asyncio.Event()), 2)
        draining = asyncio.Event()
        asyncio.get_running_loop().call_later(0.1, draining.set)
        drained = await asyncio.wait_for(collect(endless(), draining), 2)
        return done, drained

    done, drained = asyncio.run(scenario())
    assert [f.split(b"\n")[0] for f in done[1:]] == [b"id: 1", b"id: 2"]
    assert len(drained) == 2 and drained[1].startswith(b"id: 1\n")


# --- the app refuses bad input before calling the coordinator --------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app():
    return create_app(
        GatewayConfig(
            coordinator_addr=f"127.0.0.1:{closed_port()}",
            max_body_bytes=4096,
            health_timeout_s=1.0,
            request_timeout_s=2.0,
        )
    )


def call(app, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            try:
                return await asyncio.wait_for(client.request(method, path, **kwargs), 10)
            finally:
                await app.state.gateway.upstream.close()

    return asyncio.run(go())


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]


def test_http_malformed_and_deep_json(app):
    response = call(app, "POST", "/v1/tasks", content=b'{"agent": "a", "input": ')
    assert response.status_code == 400 and error_of(response)["reason"] == "MALFORMED_JSON"
    response = call(app, "POST", "/v1/tasks", content=b"[" * 2000 + b"]" * 2000)
    assert response.status_code == 400 and error_of(response)["reason"] == "JSON_TOO_DEEP"


def test_http_wrong_types_list_field_violations(app):
    response = call(
        app, "POST", "/v1/tasks", json={"agent": "a", "input": 1, "priority": "high", "labels": {"a": 1}}
    )
    err = error_of(response)
    assert response.status_code == 400 and err["reason"] == "INVALID_ARGUMENT"
    assert {v["field"] for v in err["details"]["field_violations"]} == {"priority", "labels.a"}


def test_http_body_too_large_by_length_and_while_streaming(app):
    response = call(app, "POST", "/v1/tasks", content=b"x" * 5000)
    assert response.status_code == 413 and error_of(response)["reason"] == "PAYLOAD_TOO_LARGE"

    async def chunked():
        for _ in range(10):
            yield b" " * 1000

    response = call(app, "POST", "/v1/tasks/t1/input", content=chunked())
    assert response.status_code == 413 and error_of(response)["reason"] == "PAYLOAD_TOO_LARGE"


def test_http_bad_query_and_resume_position(app):
    response = call(app, "GET", "/v1/tasks?state=bogus")
    assert response.status_code == 400
    assert error_of(response)["details"]["field_violations"][0]["field"] == "state"
    response = call(app, "GET", "/v1/tasks/t1/events", headers={"Last-Event-ID": "abc"})
    assert response.status_code == 400


def test_http_malformed_authorization_is_401(app):
    response = call(app, "GET", "/v1/tasks/t1", headers={"Authorization": "Basic dXNlcg=="})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


def test_http_unknown_route_and_wrong_method_are_json(app):
    response = call(app, "GET", "/v2/nothing")
    assert response.status_code == 404 and error_of(response)["reason"] == "ROUTE_NOT_FOUND"
    response = call(app, "DELETE", "/v1/tasks/t1")
    assert response.status_code == 405 and error_of(response)["reason"] == "METHOD_NOT_ALLOWED"
    assert "GET" in response.headers["allow"]


def test_http_unreachable_coordinator_is_503(app):
    response = call(app, "GET", "/v1/tasks/t1")
    assert response.status_code == 503 and error_of(response)["code"] == "UNAVAILABLE"
    response = call(app, "GET", "/healthz")
    assert response.status_code == 503 and response.json()["status"] == "unavailable"


def test_http_pages_need_no_key_and_fetch_nothing_from_outside(app):
    for path in ("/", "/docs"):
        response = call(app, "GET", path)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", response.text), path
        assert "@import" not in response.text
    assert call(app, "GET", "/openapi.json").json()["openapi"].startswith("3.1")
    metrics = call(app, "GET", "/metrics")
    assert metrics.status_code == 200 and "agentmesh_gateway_requests_total" in metrics.text


def test_openapi_describes_exactly_the_routes_served():
    served = {(route.path, m.lower()) for route in ROUTES for m in route.methods if m != "HEAD"}
    described = {(path, method) for path, item in DOCUMENT["paths"].items() for method in item}
    assert served == described
    refs = re.findall(r'"#/components/(\w+)/(\w+)"', json.dumps(DOCUMENT))
    for section, name in refs:
        assert name in DOCUMENT["components"][section], name
