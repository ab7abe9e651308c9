"""Agent workers (`agentmesh worker`): processes users run with their own agent files, registered
with the coordinator, which routes each task's decisions to a worker of the version it is pinned to."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agentmesh.local import TENANT_KEYS, Mesh
from agentmesh.testing import registered
from protos.agentmesh.v1 import common_pb2 as pb
from tests.conftest import client_for, run
from tests.fixtures.greeter import write_greeter


def agent_file(folder: Path, version: str, steps: int = 2) -> str:
    return write_greeter(folder, version, steps)


async def wait_state(client, task_id: str, state: int, timeout_s: float = 30.0) -> pb.Task:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        task = await client.get(task_id)
        if task.state == state:
            return task
        assert time.monotonic() < deadline, f"task {task_id} stayed {task.state}"
        await asyncio.sleep(0.05)


TENANT_AUTH = f"Bearer {TENANT_KEYS['alpha']}"


def two_workers(own_mesh, tmp_path: Path, steps: int) -> Mesh:  # type: ignore[no-untyped-def]
    """A mesh with workers `a` and `b` serving greeter v1 of `steps` steps."""
    mesh: Mesh = own_mesh()
    code = agent_file(tmp_path, "1", steps=steps)
    mesh.add_worker("a", code)
    mesh.add_worker("b", code)
    return mesh


async def both_registered(client) -> None:  # type: ignore[no-untyped-def]
    await registered(client, "a", "greeter", "1")
    await registered(client, "b", "greeter", "1")


async def decided(client, task_id: str, at_least: int) -> None:  # type: ignore[no-untyped-def]
    """Wait until the task has taken `at_least` decisions."""
    deadline = time.monotonic() + 60
    while (await client.get(task_id)).decisions < at_least:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


def stop(mesh: Mesh, name: str) -> None:
    """SIGTERM to a worker: it leaves, ends what it was deciding, and exits 0."""
    mesh.children[name].proc.terminate()  # type: ignore[union-attr]
    assert mesh.children[name].proc.wait(15) == 0  # type: ignore[union-attr]


def test_a_worker_serves_an_agent_file_the_mesh_never_loaded(own_mesh, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mesh: Mesh = own_mesh()
    mesh.add_worker("w1", agent_file(tmp_path, "1"))

    async def go() -> None:
        async with client_for(mesh) as client:
            await registered(client, "w1", "greeter", "1")
            task = await client.submit("greeter", {})
            assert task.agent_version == "1"
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            assert json.loads(done.result_json) == {"version": "1", "seen": [0, 1, "last"], "answer": None}
            listed = {a.name: a for a in (await client.list_agents()).agents}
            assert "greeter" in listed and "pipeline" in listed  # the mesh's planner serves the built-ins
            assert [(v.version, list(v.workers)) for v in listed["greeter"].versions] == [("1", ["w1"])]
        headers = {"authorization": TENANT_AUTH}
        async with httpx.AsyncClient(base_url=mesh.gateway_url, headers=headers) as http:
            body = (await http.get("/v1/agents")).json()
            (greeter,) = [a for a in body["agents"] if a["name"] == "greeter"]
            assert greeter["version"] == "1" and greeter["description"] == "greets in 2 steps"
            assert [(v["version"], v["workers"]) for v in greeter["versions"]] == [("1", ["w1"])]
            shown = (await http.get(f"/v1/tasks/{task.id}")).json()
            assert shown["agent_version"] == "1"

    run(go())


def test_version_2_takes_new_tasks_while_version_1_tasks_finish_on_1(own_mesh, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mesh: Mesh = own_mesh()
    mesh.add_worker("v1", agent_file(tmp_path, "1"))

    async def go() -> None:
        async with client_for(mesh) as client:
            await registered(client, "v1", "greeter", "1")
            old = await client.submit("greeter", {"ask": True})
            await wait_state(client, old.id, pb.TASK_STATE_WAITING)
            # Version 2 changes the code: replaying a v1 task on it would be NONDETERMINISM.
            mesh.add_worker("v2", agent_file(tmp_path, "2", steps=3))
            await registered(client, "v2", "greeter", "2")
            listed = {a.name: a for a in (await client.list_agents()).agents}["greeter"]
            assert listed.version == "2"
            assert [(v.version, list(v.workers)) for v in listed.versions] == [("2", ["v2"]), ("1", ["v1"])]
            new = await client.submit("greeter", {})
            assert new.agent_version == "2"
            done = await client.wait(new.id)
            assert json.loads(done.result_json)["version"] == "2", done
            await client.send_input(old.id, {"ok": True})
            done = await client.wait(old.id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            assert done.agent_version == "1"
            result = json.loads(done.result_json)
            assert result == {"version": "1", "seen": [0, 1, "last"], "answer": {"ok": True}}

    run(go())


def test_a_killed_worker_is_replaced_and_its_tasks_go_on(own_mesh, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two workers of one version; kill -9 each in turn under a running task: its decisions move to
    the other, and while none is left they wait for one to come back. The task ends once, whole."""
    mesh = two_workers(own_mesh, tmp_path, steps=40)

    async def go() -> None:
        async with client_for(mesh) as client:
            await both_registered(client)
            task = await client.submit("greeter", {})
            await decided(client, task.id, 8)
            mesh.kill9("a")
            await decided(client, task.id, 16)
            mesh.kill9("b")  # none left: the next decision waits for a worker
            await asyncio.sleep(0.5)
            assert (await client.get(task.id)).state == pb.TASK_STATE_RUNNING
            mesh.restart("a")
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            assert json.loads(done.result_json)["seen"] == [*range(40), "last"]
            assert done.decisions == 42

    run(go())


def test_a_worker_that_stops_leaves_and_its_tasks_move_at_once(own_mesh, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mesh = two_workers(own_mesh, tmp_path, steps=2)

    async def go() -> None:
        async with client_for(mesh) as client:
            await both_registered(client)
            task = await client.submit("greeter", {"ask": True})
            await wait_state(client, task.id, pb.TASK_STATE_WAITING)
            stop(mesh, "a")
            workers = {a.name: a for a in (await client.list_agents()).agents}["greeter"].versions[0].workers
            assert list(workers) == ["b"]
            await client.send_input(task.id, {})
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error

    run(go())


def test_a_worker_needs_the_worker_key_and_its_agents(own_mesh, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mesh: Mesh = own_mesh()
    env = {**mesh.env, "AGENTMESH_AGENTS": agent_file(tmp_path, "1")}
    base = [sys.executable, "-m", "agentmesh", "worker", "--listen", "127.0.0.1:0"]
    elsewhere = ["--data-dir", str(tmp_path / "elsewhere")]
    no_key = subprocess.run([*base, *elsewhere], env=env, capture_output=True, text=True, timeout=60)
    assert no_key.returncode == 2 and "no worker key" in no_key.stderr
    env.pop("AGENTMESH_AGENTS")
    no_agents = subprocess.run(base, env=env, capture_output=True, text=True, timeout=60)
    assert no_agents.returncode == 2 and "--agents" in no_agents.stderr

    async def go() -> None:
        import grpc

        from protos.agentmesh.v1 import planner_pb2, planner_pb2_grpc

        async with grpc.aio.insecure_channel(mesh.coordinator_addr) as channel:
            stub = planner_pb2_grpc.AgentWorkersStub(channel)
            request = planner_pb2.RegisterWorkerRequest(worker_id="x", address="127.0.0.1:1")
            for metadata in ((), (("authorization", TENANT_AUTH),)):  # a tenant's key is not one
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Register(request, metadata=metadata, timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    run(go())


def test_workers_register_again_with_a_restarted_coordinator(own_mesh, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The coordinator keeps registrations in memory only: after kill -9 and a restart, the
    worker's next heartbeat brings it back, and the parked task goes on on the same version."""
    mesh: Mesh = own_mesh()
    mesh.add_worker("w", agent_file(tmp_path, "1"))

    async def park() -> str:
        async with client_for(mesh) as client:
            await registered(client, "w", "greeter", "1")
            task = await client.submit("greeter", {"ask": True})
            await wait_state(client, task.id, pb.TASK_STATE_WAITING)
            return task.id

    async def finish(task_id: str) -> None:
        async with client_for(mesh) as client:
            await registered(client, "w", "greeter", "1")
            await client.send_input(task_id, {"after": "restart"})
            done = await client.wait(task_id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            assert json.loads(done.result_json)["answer"] == {"after": "restart"}

    task_id = run(park())
    mesh.kill9("coordinator")
    mesh.restart("coordinator")
    run(finish(task_id))


def test_workers_stopped_gracefully_under_a_running_task_hand_it_on(own_mesh, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM to the worker deciding a task (it leaves while a decision may be in flight), then to
    the other one: the task moves on to the next worker each time and ends whole."""
    mesh = two_workers(own_mesh, tmp_path, steps=40)

    async def go() -> None:
        async with client_for(mesh) as client:
            await both_registered(client)
            task = await client.submit("greeter", {})
            await decided(client, task.id, 8)
            stop(mesh, "a")
            await decided(client, task.id, 16)
            mesh.add_worker("c", agent_file(tmp_path, "1", steps=40))
            await registered(client, "c", "greeter", "1")
            stop(mesh, "b")
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            assert json.loads(done.result_json)["seen"] == [*range(40), "last"]

    run(go())
