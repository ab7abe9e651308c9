"""Cancellation reaches every process of a task, at once, and is idempotent."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from agentmesh.local import Mesh
from protos.agentmesh.v1 import common_pb2 as pb
from services.executor.cgroups import kill_base
from services.executor.warm import looks_idle
from services.executor.workspace import mounts_under
from services.runtime.errors import FailedPrecondition, NotFound
from services.runtime.procs import pid_alive
from tests.conftest import client_for, run, wait_for_action_processes


def _tree_spec() -> dict:
    # A shell with a child that escapes into its own session, a plain child, and a background sleep:
    # three `sleep` processes in all, inside the sandbox.
    command = "setsid sh -c 'sleep 600' & sh -c 'sleep 600' & sleep 600 & wait"
    return {"steps": [{"id": "tree", "tool": "shell", "args": {"command": command}, "timeout_s": 900}]}


def test_cancel_kills_the_whole_process_tree(mesh: Mesh) -> None:
    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", _tree_spec())
            pids = await wait_for_action_processes(mesh, "sleep", 3)
            assert all(pid_alive(p) for p in pids)
            cancelled_at = time.monotonic()
            reply = await client.cancel(task.id)
            assert reply.cancel_requested
            while any(pid_alive(p) for p in pids) and time.monotonic() - cancelled_at < 5:
                await asyncio.sleep(0.005)
            gone_after = time.monotonic() - cancelled_at
            assert not any(pid_alive(p) for p in pids), [p for p in pids if pid_alive(p)]
            assert gone_after < 1.0, f"processes outlived the cancel by {gone_after:.3f}s"
            final = await client.wait(task.id)
            assert final.state == pb.TASK_STATE_CANCELLED
            again = await client.cancel(task.id)  # idempotent
            assert again.state == pb.TASK_STATE_CANCELLED

    run(go())
    assert mesh.all_alive()


def test_a_cancelled_action_is_paid_for(mesh: Mesh) -> None:
    spin = {"id": "spin", "tool": "shell", "args": {"command": "while :; do :; done"}, "timeout_s": 900}
    spec = {"steps": [spin]}

    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", spec)
            await wait_for_action_processes(mesh, "sh", 1)
            await asyncio.sleep(0.5)
            await client.cancel(task.id)
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_CANCELLED
            costs = {}
            finished = {}
            async for event in client.watch(task.id):
                data = json.loads(event.data_json or "{}")
                if event.kind == "cost":
                    costs[data["action_id"]] = data["action"]
                elif event.kind == "action.finished":
                    finished[data["key"]] = data
            assert finished["spin"]["status"] == "CANCELLED" and finished["spin"]["error"] == "CANCELLED"
            spent = costs[finished["spin"]["action_id"]]
            # It spun on a core for at least the half second before the cancel.
            assert spent["cpu_ms"] >= 300 and spent["wall_ms"] >= 400, spent
            assert done.cost.cpu_ms == pytest.approx(spent["cpu_ms"]) and done.cost.usd > 0, done.cost

    run(go())


def test_another_tenants_cancel_stops_nothing(mesh: Mesh) -> None:
    # The coordinator kills a running task's actions before the cancel intent is durable; that early
    # kill must be as strict about who may cancel as the durable write is.
    async def go() -> None:
        async with client_for(mesh) as owner, client_for(mesh, "beta") as stranger:
            task = await owner.submit("pipeline", _tree_spec())
            pids = await wait_for_action_processes(mesh, "sleep", 3)
            with pytest.raises(NotFound):
                await stranger.cancel(task.id)
            await asyncio.sleep(0.3)
            assert all(pid_alive(p) for p in pids)
            assert (await owner.get(task.id)).state == pb.TASK_STATE_RUNNING
            await owner.cancel(task.id)
            assert (await owner.wait(task.id)).state == pb.TASK_STATE_CANCELLED

    run(go())


def test_cancelling_a_finished_task_is_a_failed_precondition(mesh: Mesh) -> None:
    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", {"steps": [{"id": "e", "tool": "echo"}]})
            await client.wait(task.id)
            with pytest.raises(FailedPrecondition):
                await client.cancel(task.id)

    run(go())


def test_cancel_of_a_waiting_task_is_immediate(mesh: Mesh) -> None:
    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", {"steps": [{"id": "ask", "tool": "approval"}]})
            events = client.watch(task.id)
            async for event in events:
                if event.kind == "state" and json.loads(event.data_json)["state"] == "WAITING":
                    break
            await events.aclose()
            reply = await client.cancel(task.id)
            assert reply.state == pb.TASK_STATE_CANCELLED
            with pytest.raises(FailedPrecondition):
                await client.send_input(task.id, {"approved": True})

    run(go())


def test_no_workspace_or_cgroup_left_behind(mesh: Mesh) -> None:
    workspaces = Path(os.environ.get("TMPDIR", "/tmp")) / f"agentmesh-ws-{mesh.executor_instance}"
    cgroups = kill_base(mesh.executor_instance)
    assert cgroups is not None and cgroups.is_dir()

    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", _tree_spec())
            await wait_for_action_processes(mesh, "sleep", 3)
            assert list(workspaces.iterdir()) and [p for p in cgroups.iterdir() if p.is_dir()]
            await client.cancel(task.id)
            await client.wait(task.id)

    run(go())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = _not_idle_warm(list(workspaces.iterdir()), [p for p in cgroups.iterdir() if p.is_dir()])
        if not left:
            break
        time.sleep(0.05)
    assert not left
    assert {m.name for m in mounts_under(workspaces)} <= {p.name for p in workspaces.iterdir()}


def _not_idle_warm(workspaces: list[Path], cgroups: list[Path]) -> list[Path]:
    """What is left that is not one of the executor's ready warm sandboxes."""
    idle = {cgroup.name for cgroup in cgroups if looks_idle(cgroup)}
    return [p for p in [*workspaces, *cgroups] if p.name not in idle]
