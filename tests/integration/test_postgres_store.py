"""The whole mesh with its tasks in PostgreSQL (store_url) instead of SQLite: the same task loop,
events, inputs, fan-out and crash recovery, on the scale-out store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import psycopg
import pytest

from agentmesh.local import Mesh
from protos.agentmesh.v1 import common_pb2 as pb
from tests.conftest import client_for, run


@pytest.fixture
def pg_mesh(own_mesh, pg_url: str) -> Iterator[tuple[Mesh, str]]:  # type: ignore[no-untyped-def]
    yield own_mesh(extra_env={"AGENTMESH_STORE_URL": pg_url}), pg_url


def _count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchone()[0]


def test_tasks_events_and_fan_out_live_in_postgresql(pg_mesh: tuple[Mesh, str]) -> None:
    mesh, url = pg_mesh
    spec = {
        "steps": [
            {"id": "a", "tool": "python", "args": {"code": "print(6*7)"}},
            {"id": "fan", "tool": "spawn", "depends_on": ["a"], "args": {
                "agent": "pipeline", "join": "all",
                "inputs": [{"steps": [{"id": "e", "tool": "echo", "args": {"n": n}}]} for n in range(3)],
            }},
        ]
    }  # fmt: skip

    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", spec, idempotency_key="pg-1")
            again = await client.submit("pipeline", spec, idempotency_key="pg-1")
            assert again.id == task.id  # the idempotency key holds in PostgreSQL too
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            steps = json.loads(done.result_json)["steps"]
            assert steps["a"]["stdout"] == "42\n"
            children = steps["fan"]["output"]["children"]
            assert [c["result"]["steps"]["e"]["output"] for c in children] == [{"n": 0}, {"n": 1}, {"n": 2}]
            seqs = [e.seq async for e in client.watch(task.id)]
            assert seqs == list(range(1, len(seqs) + 1)) and seqs[-1] == done.last_seq

    run(go())
    # Written to PostgreSQL, not to a SQLite file: the parent, its three children, every event.
    assert _count(url, "SELECT COUNT(*) FROM tasks") == 4
    assert _count(url, "SELECT COUNT(*) FROM tasks WHERE state = 4") == 4
    assert _count(url, "SELECT COUNT(*) FROM events") > 10
    assert not list(mesh.root.rglob("*.db"))


def test_a_waiting_task_in_postgresql_survives_a_coordinator_kill(pg_mesh: tuple[Mesh, str]) -> None:
    mesh, _ = pg_mesh
    spec = {
        "steps": [
            {"id": "ask", "tool": "approval", "args": {"prompt": "ship it?"}},
            {"id": "after", "tool": "echo", "args": {"shipped": True}, "depends_on": ["ask"]},
        ]
    }

    async def before() -> str:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", spec)
            async for event in client.watch(task.id):
                if event.kind == "state" and json.loads(event.data_json)["state"] == "WAITING":
                    return task.id
        raise AssertionError("the task never waited")

    task_id = run(before())
    mesh.kill9("coordinator")
    mesh.restart("coordinator")

    async def after() -> None:
        async with client_for(mesh) as client:
            waiting = await client.get(task_id)
            assert waiting.state == pb.TASK_STATE_WAITING and waiting.input_prompt == "ship it?"
            assert (await client.send_input(task_id, {"approved": True})).delivered
            done = await asyncio.wait_for(client.wait(task_id), 30)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            assert json.loads(done.result_json)["steps"]["after"]["output"] == {"shipped": True}

    run(after())
