"""Faults: budgets that stop running work, workers that go away, wakes that survive a crash."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from agentmesh.local import Mesh
from protos.agentmesh.v1 import common_pb2 as pb
from services.runtime.procs import pid_alive
from tests.conftest import client_for, run, survivors, wait_for_action_processes


async def _wait_state(client, task_id: str, state: str) -> None:  # type: ignore[no-untyped-def]
    async for event in client.watch(task_id):
        if event.kind == "state" and json.loads(event.data_json)["state"] == state:
            return
    raise AssertionError(f"task ended before reaching {state}")


def test_budget_exceeded_stops_the_other_running_actions(mesh: Mesh) -> None:
    spec = {
        "steps": [
            {"id": "quick", "tool": "python", "args": {"code": "import time; time.sleep(1); print(1)"}},
            {"id": "slow", "tool": "shell", "args": {"command": "exec sleep 600"}},
        ]
    }

    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", spec, budget_usd=1e-12)
            pids = await wait_for_action_processes(mesh, "sleep", 1)
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_FAILED and done.error.reason == "BUDGET_EXCEEDED", done.error
            assert not await survivors(pids, 3), "the slow step outlived its task's budget stop"
            # The stopped step is on the bill too: it ran beside the quick one's whole second.
            finished = [
                json.loads(e.data_json) async for e in client.watch(task.id) if e.kind == "action.finished"
            ]
            slow = next(f for f in finished if f["key"] == "slow")
            assert slow["status"] == "CANCELLED", finished
            assert done.cost.wall_ms >= 1900, done.cost

    run(go())


def test_a_workspace_that_cannot_be_made_fails_fast_and_clearly(mesh: Mesh) -> None:
    spec = {
        "steps": [
            {
                "id": "clash",
                "tool": "shell",
                "args": {"command": "true"},
                "files": {"a": "x", "a/b": "y"},
                "timeout_s": 60,
            }
        ]
    }

    async def go() -> None:
        async with client_for(mesh) as client:
            started = time.monotonic()
            done = await client.wait((await client.submit("pipeline", spec)).id)
            assert time.monotonic() - started < 10
            step = json.loads(done.result_json)["steps"]["clash"]
            assert done.state == pb.TASK_STATE_FAILED and step["error"]["reason"] == "WORKSPACE_ERROR", step

    run(go())
    assert mesh.all_alive()


def test_an_executor_restart_reruns_in_flight_work_without_spending_attempts(
    own_mesh, shared_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    mesh = own_mesh(extra_env={"AGENTMESH_SHARED_DIR": str(shared_dir)})
    marker = shared_dir / "started"
    spec = {
        "steps": [
            {
                "id": "s",
                "tool": "shell",
                "retry": {"attempts": 1},
                "args": {"command": 'echo x >> "$AGENTMESH_SHARED_DIR/started"; sleep 1; echo finished'},
            }
        ]
    }

    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", spec)
            await wait_for_action_processes(mesh, "sleep", 1)
            executor = mesh.children["executor"]
            os.kill(executor.pid, signal.SIGTERM)
            executor.proc.wait(20)  # type: ignore[union-attr]
            mesh.restart("executor")
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            step = json.loads(done.result_json)["steps"]["s"]
            assert step["attempts"] == 1 and step["stdout"] == "finished\n"
            assert len(marker.read_text().split()) >= 2  # it did run again

    run(go())


def test_an_input_sent_to_a_queued_waiter_survives_a_coordinator_crash(own_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = own_mesh(extra_env={"AGENTMESH_MAX_RUNNING": "1"})

    async def go() -> None:
        async with client_for(mesh) as client:
            waiter = await client.submit("pipeline", {"steps": [{"id": "ask", "tool": "approval"}]})
            await _wait_state(client, waiter.id, "WAITING")
            holder = await client.submit(
                "pipeline", {"steps": [{"id": "hold", "tool": "shell", "args": {"command": "sleep 2"}}]}
            )
            await _wait_state(client, holder.id, "RUNNING")
            reply = await client.send_input(waiter.id, {"approved": True})
            assert reply.delivered
        mesh.kill9("coordinator")
        mesh.restart("coordinator")
        async with client_for(mesh) as client:
            finals = await asyncio.gather(client.wait(waiter.id), client.wait(holder.id))
            assert [t.state for t in finals] == [pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_SUCCEEDED]

    run(go())


def _across_a_coordinator_crash(mesh: Mesh, spec: dict, until: Callable, then: Callable) -> None:
    """Submit the pipeline `spec`, wait for `until(client, task_id)`, kill -9 the coordinator and
    start it again, then check `then(client, task_id)` against the new one."""

    async def before() -> str:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", spec)
            await until(client, task.id)
            return task.id

    task_id = run(before())
    mesh.kill9("coordinator")
    mesh.restart("coordinator")

    async def after() -> None:
        async with client_for(mesh) as client:
            await then(client, task_id)

    run(after())


def test_a_task_waiting_for_input_survives_a_coordinator_kill_and_resumes_when_it_arrives(own_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = own_mesh()
    spec = {
        "steps": [
            {"id": "ask", "tool": "approval", "args": {"prompt": "ship it?"}},
            {"id": "after", "tool": "echo", "args": {"shipped": True}, "depends_on": ["ask"]},
        ]
    }

    async def until_waiting(client, task_id: str) -> None:  # type: ignore[no-untyped-def]
        await _wait_state(client, task_id, "WAITING")

    async def answer(client, task_id: str) -> None:  # type: ignore[no-untyped-def]
        waiting = await client.get(task_id)
        assert waiting.state == pb.TASK_STATE_WAITING and waiting.input_prompt == "ship it?"
        reply = await client.send_input(task_id, {"approved": True, "by": "after the crash"})
        assert reply.delivered
        done = await client.wait(task_id)
        assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
        steps = json.loads(done.result_json)["steps"]
        assert steps["ask"]["output"] == {"approved": True, "by": "after the crash"}
        assert steps["after"]["output"] == {"shipped": True}

    _across_a_coordinator_crash(mesh, spec, until_waiting, answer)


ONCE = (
    'if [ -e "$AGENTMESH_SHARED_DIR/ran" ]; then echo second run; '
    'else touch "$AGENTMESH_SHARED_DIR/ran"; exec sleep 600; fi'
)


def _unsafe_step(policy: str | None) -> dict:
    # With network on, the step may have changed the world before its worker died: not safe to repeat.
    step = {"id": "deploy", "tool": "shell", "network": True, "args": {"command": ONCE}, "timeout_s": 900}
    if policy:
        step["on_ambiguous"] = policy
    return {"steps": [step]}


def test_an_unsafe_action_whose_worker_died_is_not_run_again(own_mesh, shared_dir: Path) -> None:  # type: ignore[no-untyped-def]
    mesh = own_mesh(extra_env={"AGENTMESH_SHARED_DIR": str(shared_dir)})

    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", _unsafe_step(None))
            await wait_for_action_processes(mesh, "sleep", 1)
            mesh.kill9("executor")
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_FAILED
            step = json.loads(done.result_json)["steps"]["deploy"]
            assert step["error"]["reason"] == "AMBIGUOUS_FAILURE", step
            # Why, from the shell tool's own declaration: sandboxed, but this run had network.
            assert "not safe to repeat (shell ran with network" in step["error"]["message"]
            mesh.restart("executor")  # reaps the killed executor's sandbox

    run(go())
    assert not mesh.action_processes()


def test_on_ambiguous_ask_waits_for_a_person_and_reruns(own_mesh, shared_dir: Path) -> None:  # type: ignore[no-untyped-def]
    mesh = own_mesh(extra_env={"AGENTMESH_SHARED_DIR": str(shared_dir)})

    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", _unsafe_step("ask"))
            await wait_for_action_processes(mesh, "sleep", 1)
            mesh.kill9("executor")
            mesh.restart("executor")
            await _wait_state(client, task.id, "WAITING")
            reply = await client.send_input(task.id, {"rerun": True})
            assert reply.delivered
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            step = json.loads(done.result_json)["steps"]["deploy"]
            assert step["stdout"] == "second run\n"

    run(go())


def test_after_a_coordinator_crash_an_unsafe_action_that_may_have_run_is_not_run_again(  # type: ignore[no-untyped-def]
    own_mesh, shared_dir: Path
) -> None:
    mesh = own_mesh(extra_env={"AGENTMESH_SHARED_DIR": str(shared_dir)})

    async def until_running(client, task_id: str) -> None:  # type: ignore[no-untyped-def]
        await wait_for_action_processes(mesh, "sleep", 1)

    async def after(client, task_id: str) -> None:  # type: ignore[no-untyped-def]
        done = await client.wait(task_id)
        assert done.state == pb.TASK_STATE_FAILED
        step = json.loads(done.result_json)["steps"]["deploy"]
        assert step["error"]["reason"] == "AMBIGUOUS_FAILURE", step
        assert "coordinator stopped" in step["error"]["message"]

    _across_a_coordinator_crash(mesh, _unsafe_step(None), until_running, after)
    assert not mesh.action_processes()
    assert (shared_dir / "ran").exists()  # it ran once, and only once: no "second run" happened


def test_an_executor_crash_leaves_no_process_and_its_successor_reaps_the_rest(own_mesh) -> None:  # type: ignore[no-untyped-def]
    """kill -9 the executor while an action runs in a warm sandbox and two more wait ready: every
    sandbox dies with it (bubblewrap's --die-with-parent), and the next executor removes the cgroups
    and workspace mounts they left, then runs the action again."""
    from services.executor.cgroups import kill_base
    from services.executor.workspace import mounts_under

    mesh = own_mesh()
    spec = {"steps": [{"id": "s", "tool": "shell", "args": {"command": "sleep 2; echo done"}}]}
    cgroups = kill_base(mesh.executor_instance)
    workspaces = Path(os.environ.get("TMPDIR", "/tmp")) / f"agentmesh-ws-{mesh.executor_instance}"
    assert cgroups is not None

    def of(pid: int, name: str) -> bool:
        """Made by executor `pid`: warm slots are warm-<pid>-<n>, cold ones <action>#<attempt>#<pid>."""
        return name.startswith(f"warm-{pid}-") or name.endswith(f"#{pid}")

    def everything() -> set[int]:
        found: set[int] = set()
        for procs in cgroups.glob("*/cgroup.procs"):
            found |= {int(pid) for pid in procs.read_text().split()}
        return found

    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", spec)
            await wait_for_action_processes(mesh, "sleep", 1)
            old = mesh.pid("executor")
            victims = everything()
            assert len(victims) >= 4  # the action's sandbox and at least one ready one
            mesh.kill9("executor")
            deadline = time.monotonic() + 5
            while any(pid_alive(p) for p in victims) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert not [p for p in victims if pid_alive(p)]
            left = {p.name for p in cgroups.iterdir() if p.is_dir()}
            assert any(of(old, name) for name in left)  # the crash left them; nobody removed them
            mesh.restart("executor")
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            names = {p.name for p in cgroups.iterdir() if p.is_dir()} | {p.name for p in workspaces.iterdir()}
            assert not [name for name in names if of(old, name)], names
            assert not [m for m in mounts_under(workspaces) if of(old, m.name)]

    run(go())
