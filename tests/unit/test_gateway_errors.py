"""The gateway's gRPC status -> HTTP table and its JSON error responses."""

from __future__ import annotations

import json
import logging

import grpc
import pytest

from gateway.errors import (
    HTTP_STATUS,
    error_response,
    error_status,
    http_status_for,
    payload_too_large,
    retry_after_seconds,
    unexpected_error,
)
from gateway.sse import format_error
from services.runtime import errors as e

EXPECTED = {
    "OK": 200,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 409,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "DATA_LOSS": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


def body(response) -> dict:
    return json.loads(response.body)


def test_table_covers_every_grpc_code_with_the_contracted_status():
    assert {code.name for code in grpc.StatusCode} == set(EXPECTED)
    for code in grpc.StatusCode:
        assert HTTP_STATUS[code] == EXPECTED[code.name], code
        assert http_status_for(code) == EXPECTED[code.name]


@pytest.mark.parametrize(
    "cls",
    [
        e.InvalidArgument,
        e.NotFound,
        e.AlreadyExists,
        e.FailedPrecondition,
        e.ResourceExhausted,
        e.Unauthenticated,
        e.PermissionDenied,
        e.Unavailable,
        e.DeadlineExceeded,
        e.Cancelled,
        e.Unimplemented,
        e.Internal,
    ],
)
def test_every_error_class_maps_through_its_code(cls):
    response = error_response(cls("boom"))
    assert response.status_code == EXPECTED[cls.code.name]
    assert body(response) == {
        "error": {"code": cls.code.name, "reason": cls.default_reason, "message": "boom", "details": {}}
    }
    assert response.headers["content-type"] == "application/json"


def test_remote_error_keeps_a_code_no_local_class_has():
    assert error_response(e.RemoteError(grpc.StatusCode.ABORTED, "lost a race")).status_code == 409
    assert error_response(e.RemoteError(grpc.StatusCode.DATA_LOSS, "gone")).status_code == 500
    assert error_response(e.RemoteError(grpc.StatusCode.OUT_OF_RANGE, "past the end")).status_code == 400


@pytest.mark.parametrize(
    ("hint", "header"),
    [
        (None, 1),
        (0.0, 1),
        (0.2, 1),
        (1.0, 1),
        (2.3, 3),
        (30, 30),
        (float("inf"), 1),
        (float("nan"), 1),
        (-5, 1),
    ],
)
def test_retry_after_rounds_up_and_is_at_least_one_second(hint, header):
    assert retry_after_seconds(hint) == header


def test_resource_exhausted_is_429_with_retry_after_and_the_hint_in_details():
    response = error_response(e.ResourceExhausted("queue full", retry_after_s=2.3, reason="QUEUE_FULL"))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    err = body(response)["error"]
    assert err["reason"] == "QUEUE_FULL"
    assert err["details"]["retry_after_s"] == 2.3
    # Without a hint the client still learns when to come back.
    assert error_response(e.ResourceExhausted("slow down")).headers["retry-after"] == "1"


def test_unauthenticated_is_401_with_www_authenticate():
    response = error_response(e.Unauthenticated("unknown key"))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "www-authenticate" not in error_response(e.PermissionDenied("not yours")).headers


def test_field_violations_travel_in_details():
    error = e.InvalidArgument("bad", field_violations=[("priority", "must be an integer")])
    assert body(error_response(error))["error"]["details"]["field_violations"] == [
        {"field": "priority", "description": "must be an integer"}
    ]


def test_payload_too_large_is_413_with_its_own_reason():
    error = payload_too_large(1024)
    assert error_status(error) == 413
    response = error_response(error)
    assert response.status_code == 413
    assert body(response)["error"]["reason"] == "PAYLOAD_TOO_LARGE"
    assert "1024" in body(response)["error"]["message"]


def test_unexpected_errors_get_a_logged_correlation_id(caplog):
    with caplog.at_level(logging.ERROR, logger="gateway.errors"):
        error = unexpected_error(ZeroDivisionError("oops"), "GET /v1/tasks")
    response = error_response(error)
    assert response.status_code == 500
    err = body(response)["error"]
    correlation = err["details"]["correlation_id"]
    assert len(correlation) == 12 and correlation in err["message"]
    assert "oops" not in err["message"]  # internals stay in the log
    assert any(correlation in r.getMessage() and r.exc_info for r in caplog.records)


def test_stream_errors_have_the_same_body_as_http_errors():
    frame = format_error(e.Unavailable("coordinator went away")).decode()
    assert frame.startswith("event: error\ndata: ") and frame.endswith("\n\n")
    payload = json.loads(frame.split("data: ", 1)[1])
    assert payload == {
        "error": {
            "code": "UNAVAILABLE",
            "reason": "UNAVAILABLE",
            "message": "coordinator went away",
            "details": {},
        }
    }
