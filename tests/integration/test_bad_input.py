"""Garbage in gives a clear error with the right code, and every process stays up."""

from __future__ import annotations

import httpx
import pytest

from agentmesh.local import TENANT_KEYS, Mesh
from services.runtime.errors import InvalidArgument, NotFound
from tests.conftest import client_for, run

AUTH = {"Authorization": f"Bearer {TENANT_KEYS['alpha']}"}


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"agent": "no-such-agent", "input": {}}, 400, "UNKNOWN_AGENT"),
        ({"agent": "pipeline", "input": {"steps": "nope"}}, 400, None),
        ({"agent": "pipeline", "input": {"steps": [{"id": "x", "tool": "rm -rf"}]}}, 400, None),
        ({"agent": "pipeline", "priority": "high", "input": {}}, 400, None),
        ({"agent": "pipeline", "labels": {"a": 1}, "input": {}}, 400, None),
        ({"input": {}}, 400, None),
        (
            {
                "agent": "pipeline",
                "input": {
                    "steps": [
                        {"id": "x", "tool": "shell", "args": {"command": "true"}, "files": {"../escape": "x"}}
                    ]
                },
            },
            400,
            None,
        ),
        (
            {
                "agent": "pipeline",
                "input": {
                    "steps": [
                        {
                            "id": "x",
                            "tool": "shell",
                            "args": {"command": "true"},
                            "files": {"/etc/passwd": "x"},
                        }
                    ]
                },
            },
            400,
            None,
        ),
        (
            {
                "agent": "pipeline",
                "input": {
                    "steps": [
                        {"id": "a", "tool": "echo", "depends_on": ["b"]},
                        {"id": "b", "tool": "echo", "depends_on": ["a"]},
                    ]
                },
            },
            400,
            None,
        ),
    ],
)
def test_bad_submits_are_refused_clearly(mesh: Mesh, body: dict, status: int, reason: str | None) -> None:
    with httpx.Client(base_url=mesh.gateway_url, timeout=30) as http:
        reply = http.post("/v1/tasks", json=body, headers=AUTH)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["message"]
    if reason:
        assert error["reason"] == reason
    assert mesh.all_alive()


def test_malformed_deep_and_huge_bodies(mesh: Mesh) -> None:
    with httpx.Client(base_url=mesh.gateway_url, timeout=30) as http:
        malformed = http.post("/v1/tasks", content=b'{"agent": "pipeline", "input": {', headers=AUTH)
        assert malformed.status_code == 400
        deep = b'{"agent": "pipeline", "input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        reply = http.post("/v1/tasks", content=deep, headers=AUTH)
        assert reply.status_code in (400, 413), reply.text
        huge = b'{"agent": "pipeline", "input": "' + b"x" * (8 << 20) + b'"}'
        assert http.post("/v1/tasks", content=huge, headers=AUTH).status_code == 413
        assert http.get("/v1/tasks/does-not-exist", headers=AUTH).status_code == 404
        assert http.post("/v1/tasks/does-not-exist/cancel", headers=AUTH).status_code == 404
        assert http.post("/v1/tasks/does-not-exist/input", json={"data": 1}, headers=AUTH).status_code == 404
        assert http.get("/v1/tasks", params={"state": "SLEEPY"}, headers=AUTH).status_code == 400
        assert http.get("/healthz").status_code == 200
    assert mesh.all_alive()


def test_bad_grpc_requests(mesh: Mesh) -> None:
    async def go() -> None:
        async with client_for(mesh) as client:
            with pytest.raises(InvalidArgument):
                await client.submit("pipeline", None, input_json="{not json")
            with pytest.raises(InvalidArgument):
                await client.submit("pipeline", None, input_json="[" * 100_000 + "]" * 100_000)
            with pytest.raises(InvalidArgument):
                await client.submit("", {})
            with pytest.raises(NotFound):
                await client.get("nope")
            with pytest.raises(NotFound):
                async for _ in client.watch("nope"):
                    pass

    run(go())
    assert mesh.all_alive()


def test_tenants_never_see_each_other(mesh: Mesh) -> None:
    async def go() -> str:
        async with client_for(mesh, "alpha") as client:
            task = await client.submit(
                "pipeline",
                {"steps": [{"id": "ask", "tool": "approval", "args": {"prompt": "ok?", "timeout_s": 60}}]},
            )
            return task.id

    task_id = run(go())
    beta = {"Authorization": f"Bearer {TENANT_KEYS['beta']}"}
    with httpx.Client(base_url=mesh.gateway_url, timeout=30) as http:
        assert http.get(f"/v1/tasks/{task_id}", headers=beta).status_code == 404
        assert http.get(f"/v1/tasks/{task_id}/events", headers=beta).status_code == 404
        assert http.post(f"/v1/tasks/{task_id}/cancel", headers=beta).status_code == 404
        assert (
            http.post(
                f"/v1/tasks/{task_id}/input", json={"data": {"approved": True}}, headers=beta
            ).status_code
            == 404
        )
        assert task_id not in [
            t["id"] for t in http.get("/v1/tasks?limit=1000", headers=beta).json()["tasks"]
        ]
        assert http.get(f"/v1/tasks/{task_id}").status_code == 401
        assert http.get(f"/v1/tasks/{task_id}", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.post(f"/v1/tasks/{task_id}/cancel", headers=AUTH).status_code == 202


def test_resolve_is_refused_clearly_for_bad_bodies_and_tasks_that_are_not_held(mesh: Mesh) -> None:
    spec = {"agent": "pipeline", "input": {"steps": [{"id": "a", "tool": "echo"}]}}
    with httpx.Client(base_url=mesh.gateway_url, timeout=30) as http:
        task_id = http.post("/v1/tasks", json=spec, headers=AUTH).json()["id"]
        cases = [
            ({}, 400, "INVALID_ARGUMENT"),
            ({"action": "explode"}, 400, "INVALID_ARGUMENT"),
            ({"action": "reset", "to_decision": -1}, 400, "INVALID_ARGUMENT"),
            ({"action": "resume", "to_decision": 2}, 400, "INVALID_ARGUMENT"),
            ({"action": "resume", "bogus": 1}, 400, "INVALID_ARGUMENT"),
            ({"action": "resume"}, 409, "NOT_HELD"),
        ]
        for body, status, reason in cases:
            reply = http.post(f"/v1/tasks/{task_id}/resolve", json=body, headers=AUTH)
            assert reply.status_code == status, (body, reply.text)
            assert reply.json()["error"]["reason"] == reason, (body, reply.text)
        missing = http.post("/v1/tasks/nope/resolve", json={"action": "fail"}, headers=AUTH)
        assert missing.status_code == 404, missing.text
    assert mesh.all_alive()
