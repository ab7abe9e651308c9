"""A task's timeline (`GET /v1/tasks/{id}/timeline`, `agentmesh timeline ID`): its queue wait, each
decision with the planner's time, each call to a worker with its address, slot wait, status and
cost, retries apart, and waits on input."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import httpx

from agentmesh.local import TENANT_KEYS, Mesh
from protos.agentmesh.v1 import common_pb2 as pb
from tests.conftest import client_for, run

SPEC = {
    "steps": [
        {"id": "hello", "tool": "echo", "args": {"hi": 1}},
        {"id": "flaky", "tool": "python", "args": {"code": "raise SystemExit(3)"},
         "retry": {"attempts": 2, "backoff_s": 0.05}, "continue_on_error": True},
        {"id": "ok", "tool": "approval", "args": {"prompt": "go?"}, "depends_on": ["hello"]},
    ]
}  # fmt: skip


def test_the_timeline_shows_the_queue_decisions_attempts_and_waits(mesh: Mesh) -> None:
    async def go() -> str:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", SPEC)
            for _ in range(500):
                if (await client.get(task.id)).state == pb.TASK_STATE_WAITING:
                    break
                await asyncio.sleep(0.02)
            await client.send_input(task.id, {"approved": True})
            assert (await client.wait(task.id)).state == pb.TASK_STATE_SUCCEEDED
            return task.id

    task_id = run(go())
    reply = httpx.get(
        f"{mesh.gateway_url}/v1/tasks/{task_id}/timeline",
        headers={"authorization": f"Bearer {TENANT_KEYS['alpha']}"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    spans = reply.json()["spans"]
    kinds = [s["kind"] for s in spans]
    assert kinds[0] == "queued" and "decision" in kinds
    assert all(s["end"] >= s["start"] for s in spans)
    decisions = [s for s in spans if s["kind"] == "decision"]
    assert decisions[0]["name"] == "decision 1" and decisions[-1]["status"] == "SUCCEEDED"
    assert all(d["duration_ms"] > 0 for d in decisions)  # the planner's time
    hello = [s for s in spans if s["name"] == "hello"]
    assert len(hello) == 1 and hello[0]["worker"] == mesh.env["AGENTMESH_EXECUTOR_ADDR"]
    assert hello[0]["status"] == "OK" and hello[0]["queued_ms"] >= 0 and hello[0]["action_kind"] == "exec"
    flaky = [s for s in spans if s["name"] == "flaky"]
    assert [(s["attempt"], s["status"]) for s in flaky] == [(1, "FAILED"), (2, "FAILED")]
    assert flaky[1]["start"] >= flaky[0]["end"]  # the retry came after the backoff
    assert all(s["cost"]["cpu_ms"] >= 0 for s in flaky)
    wait = [s for s in spans if s["name"] == "ok"]
    assert len(wait) == 1 and wait[0]["kind"] == "wait" and wait[0]["action_kind"] == "await_input"
    shown = subprocess.run(
        [sys.executable, "-m", "agentmesh", "timeline", task_id, "--address", mesh.coordinator_addr,
         "--api-key", TENANT_KEYS["alpha"]],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "flaky #2" in shown.stdout and "decision 1" in shown.stdout and "█" in shown.stdout
    as_json = json.loads(
        subprocess.run(
            [sys.executable, "-m", "agentmesh", "timeline", task_id, "--address", mesh.coordinator_addr,
             "--api-key", TENANT_KEYS["alpha"], "--json"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
    )  # fmt: skip
    assert as_json["spans"] == spans


def test_another_tenants_timeline_is_not_found(mesh: Mesh) -> None:
    async def go() -> str:
        async with client_for(mesh) as client:
            return (await client.submit("pipeline", {"steps": [{"id": "a", "tool": "echo"}]})).id

    task_id = run(go())
    reply = httpx.get(
        f"{mesh.gateway_url}/v1/tasks/{task_id}/timeline",
        headers={"authorization": f"Bearer {TENANT_KEYS['beta']}"},
        timeout=10,
    )
    assert reply.status_code == 404
