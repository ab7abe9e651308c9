"""The whole mesh with its tasks in PostgreSQL (store_url) instead of SQLite: the same task loop,
events, inputs, fan-out and crash recovery, on the scale-out store."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator

import grpc
import psycopg
import pytest

from agentmesh.client import AgentMeshClient
from agentmesh.local import TENANT_KEYS, Mesh
from agentmesh.testing import registered
from protos.agentmesh.v1 import agent_service_pb2 as api
from protos.agentmesh.v1 import agent_service_pb2_grpc as api_grpc
from protos.agentmesh.v1 import common_pb2 as pb
from services.runtime.errors import AgentMeshError
from tests.conftest import client_for, run, survivors, wait_for_action_processes
from tests.fixtures.greeter import write_greeter


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


# ---------------------------------------------------------------- several coordinators, one database


@pytest.fixture
def two_coordinators(own_mesh, pg_url: str, shared_dir) -> Iterator[tuple[Mesh, str]]:  # type: ignore[no-untyped-def]
    """A mesh whose coordinator shares its PostgreSQL database with a second one (leases of 2 s);
    the second one's address."""
    mesh = own_mesh(
        extra_env={
            "AGENTMESH_STORE_URL": pg_url,
            "AGENTMESH_LEASE_S": "2",
            "AGENTMESH_SHARED_DIR": str(shared_dir),
        }
    )
    yield mesh, mesh.add_coordinator("coordinator-b")


def test_tasks_submitted_to_two_coordinators_each_run_once(two_coordinators, shared_dir) -> None:  # type: ignore[no-untyped-def]
    mesh, b_addr = two_coordinators
    mark = (
        "import os\n"
        "path = os.environ['AGENTMESH_SHARED_DIR'] + '/ran'\n"
        "open(path, 'a').write(os.environ['AGENTMESH_TASK_ID'] + '\\n')"
    )
    spec = {"steps": [{"id": "mark", "tool": "python", "args": {"code": mark}}]}

    async def go() -> list[str]:
        async with client_for(mesh) as a, AgentMeshClient(b_addr, TENANT_KEYS["alpha"]) as b:
            ids = [(await client.submit("pipeline", spec)).id for client in (a, b) for _ in range(6)]
            finals = await asyncio.gather(*(b.wait(i) for i in ids[:6]), *(a.wait(i) for i in ids[6:]))
            assert all(t.state == pb.TASK_STATE_SUCCEEDED for t in finals), [t.error for t in finals]
            return ids

    ids = run(go())
    ran = (shared_dir / "ran").read_text().split()
    assert sorted(ran) == sorted(ids)  # each task's step ran once, on whichever coordinator held it


def test_a_task_running_on_one_coordinator_is_cancelled_through_the_other(two_coordinators) -> None:  # type: ignore[no-untyped-def]
    mesh, b_addr = two_coordinators
    slow = {"id": "slow", "tool": "shell", "args": {"command": "exec sleep 600"}, "timeout_s": 900}
    spec = {"steps": [slow]}

    async def go() -> None:
        async with client_for(mesh) as a, AgentMeshClient(b_addr, TENANT_KEYS["alpha"]) as b:
            task = await a.submit("pipeline", spec)
            pids = await wait_for_action_processes(mesh, "sleep", 1)
            assert (await b.get(task.id)).state == pb.TASK_STATE_RUNNING
            reply = await b.cancel(task.id)
            assert reply.cancel_requested
            done = await asyncio.wait_for(b.wait(task.id), 20)
            assert done.state == pb.TASK_STATE_CANCELLED
            assert not await survivors(pids, 5)

    run(go())


def test_a_key_made_through_one_coordinator_works_on_the_other_until_revoked(two_coordinators) -> None:  # type: ignore[no-untyped-def]
    mesh, b_addr = two_coordinators
    admin_md = (("authorization", f"Bearer {(mesh.data_dir / 'admin.key').read_text().strip()}"),)

    async def go() -> None:
        async with grpc.aio.insecure_channel(mesh.coordinator_addr) as channel:
            admin = api_grpc.AdminStub(channel)
            made = await admin.CreateKey(api.CreateKeyRequest(tenant="gamma"), metadata=admin_md, timeout=10)
            async with AgentMeshClient(b_addr, made.secret) as b:
                await b.list()  # at once: a coordinator reads the keys again when it meets an unknown one
                await admin.RevokeKey(api.RevokeKeyRequest(id=made.key.id), metadata=admin_md, timeout=10)
                deadline = time.monotonic() + 10
                while True:  # the other coordinator reads the keys each second
                    try:
                        await b.list()
                    except AgentMeshError as exc:
                        assert exc.reason == "REVOKED_API_KEY"
                        break
                    assert time.monotonic() < deadline, "the revocation never reached the other coordinator"
                    await asyncio.sleep(0.05)
            request = api.ListAuditRequest(tenant="gamma")
            entries = (await admin.ListAudit(request, metadata=admin_md, timeout=10)).entries
            assert [(e.action, e.target) for e in entries] == [
                ("key.revoke", made.key.id),
                ("key.create", made.key.id),
            ]

    run(go())


def test_a_coordinator_that_dies_has_its_running_task_taken_over(two_coordinators) -> None:  # type: ignore[no-untyped-def]
    mesh, b_addr = two_coordinators
    spec = {
        "steps": [
            {"id": "work", "tool": "shell", "args": {"command": "sleep 2; echo worked"}},
            {"id": "after", "tool": "echo", "args": {"done": True}, "depends_on": ["work"]},
        ]
    }

    async def submit() -> str:
        async with client_for(mesh) as a:
            task = await a.submit("pipeline", spec)
            await wait_for_action_processes(mesh, "sleep", 1)
            return task.id

    task_id = run(submit())
    mesh.kill9("coordinator")  # its lease lapses within 2 s; the other coordinator takes the task

    async def after() -> None:
        async with AgentMeshClient(b_addr, TENANT_KEYS["alpha"]) as b:
            done = await asyncio.wait_for(b.wait(task_id), 60)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            steps = json.loads(done.result_json)["steps"]
            # Cut off mid-run with its coordinator, and safe to repeat (sandboxed, no network): run again.
            assert steps["work"]["stdout"] == "worked\n" and steps["after"]["output"] == {"done": True}

    run(after())


def test_a_coordinator_that_stops_hands_its_tasks_over_at_once(own_mesh, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    # Leases of 60 s: only the stopping coordinator's release lets the other take the task in time.
    mesh = own_mesh(extra_env={"AGENTMESH_STORE_URL": pg_url, "AGENTMESH_LEASE_S": "60"})
    b_addr = mesh.add_coordinator("coordinator-b")
    work = {"id": "work", "tool": "shell", "args": {"command": "sleep 2; echo worked"}}

    async def submit() -> str:
        async with client_for(mesh) as a:
            task = await a.submit("pipeline", {"steps": [work]})
            await wait_for_action_processes(mesh, "sleep", 1)
            return task.id

    task_id = run(submit())
    coordinator = mesh.children["coordinator"]
    os.kill(coordinator.pid, signal.SIGTERM)
    coordinator.proc.wait(30)  # type: ignore[union-attr]

    async def after() -> None:
        async with AgentMeshClient(b_addr, TENANT_KEYS["alpha"]) as b:
            done = await asyncio.wait_for(b.wait(task_id), 30)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error

    run(after())


def test_a_coordinator_that_lost_its_lease_writes_nothing_more(own_mesh, pg_url: str, shared_dir) -> None:  # type: ignore[no-untyped-def]
    # Leases of 60 s (a heartbeat every 20 s): the fence on the result's write, not the heartbeat,
    # is what stops the run here.
    mesh = own_mesh(
        extra_env={
            "AGENTMESH_STORE_URL": pg_url,
            "AGENTMESH_LEASE_S": "60",
            "AGENTMESH_SHARED_DIR": str(shared_dir),
        }
    )
    command = 'echo run >> "$AGENTMESH_SHARED_DIR/runs"; sleep 2; echo worked'
    spec = {"steps": [{"id": "work", "tool": "shell", "args": {"command": command}}]}

    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", spec)
            await wait_for_action_processes(mesh, "sleep", 1)
            # Another coordinator takes the task over while this one's action runs (as if this one
            # had stalled past its lease), holding it for 3 s and then dying.
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(
                    "UPDATE tasks SET owner = 'elsewhere', lease_until = %s WHERE id = %s",
                    (time.time() + 3, task.id),
                )
            done = await asyncio.wait_for(client.wait(task.id), 60)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            finished = [
                json.loads(e.data_json) async for e in client.watch(task.id) if e.kind == "action.finished"
            ]
            # The result's write was refused (not this coordinator's task any more), and the run
            # stopped. Once the other's lease lapsed, this one took the task back and dispatched
            # the step again under the same action id: the executor answered with the result it
            # remembered, so the step ran once, and its result was written once.
            assert [f["key"] for f in finished] == ["work"], finished
            assert json.loads(done.result_json)["steps"]["work"]["stdout"] == "worked\n"

    run(go())
    assert (shared_dir / "runs").read_text().split() == ["run"]
    assert "is held by elsewhere now" in (mesh.logs / "coordinator.log").read_text()


def test_an_agent_worker_serves_two_coordinators_and_a_task_moves_between_them(
    own_mesh, pg_url: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """One worker registered with both coordinators: a task parked on the first goes on through the
    second once the first dies, decided by the same worker on the version it started on."""
    mesh = own_mesh(
        extra_env={
            "AGENTMESH_STORE_URL": pg_url,
            "AGENTMESH_LEASE_S": "2",
            "AGENTMESH_WORKER_KEY": "wk-0123456789",
        }
    )
    b_addr = mesh.add_coordinator("coordinator-b")
    mesh.add_worker(
        "w", write_greeter(tmp_path, "1"), AGENTMESH_COORDINATORS=f"{mesh.coordinator_addr},{b_addr}"
    )

    async def go() -> None:
        async with client_for(mesh) as a, AgentMeshClient(b_addr, TENANT_KEYS["alpha"]) as b:
            await registered(a, "w", "greeter", "1")
            await registered(b, "w", "greeter", "1")
            task = await a.submit("greeter", {"ask": True})
            while (await b.get(task.id)).state != pb.TASK_STATE_WAITING:
                await asyncio.sleep(0.05)
            mesh.kill9("coordinator")
            await b.send_input(task.id, {"ok": True})
            done = await asyncio.wait_for(b.wait(task.id), 60)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            assert json.loads(done.result_json) == {
                "version": "1",
                "seen": [0, 1, "last"],
                "answer": {"ok": True},
            }

    run(go())
