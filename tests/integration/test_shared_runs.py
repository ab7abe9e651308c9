"""share_identical: an exec action joins an identical one of the same tenant that is running, and
shares its result, instead of running again."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from protos.agentmesh.v1 import common_pb2 as pb
from tests.conftest import client_for, run, wait_for_action_processes


def _spec(log: Path, share: bool = True) -> dict:
    # Each run of the step adds a line to `log` (the sandbox sees the shared dir, not the host's
    # files), then sleeps long enough for a second task to come and join it.
    command = f'echo ran >> "$AGENTMESH_SHARED_DIR/{log.name}"; sleep 1; echo done'
    step = {"id": "test", "tool": "shell", "args": {"command": command}, "share_identical": share}
    return {"steps": [step]}


async def _events(client, task_id: str) -> list[pb.Event]:  # type: ignore[no-untyped-def]
    found = []
    async for event in client.watch(task_id):
        found.append(event)
        if event.kind == "state" and json.loads(event.data_json)["terminal"]:
            return found
    return found


def _runs(log: Path) -> int:
    return len(log.read_text().split()) if log.exists() else 0


def test_identical_actions_of_one_tenant_run_once(own_mesh, shared_dir: Path) -> None:  # type: ignore[no-untyped-def]
    mesh = own_mesh(extra_env={"AGENTMESH_SHARED_DIR": str(shared_dir)})

    async def pair(log: Path, share: bool, second_tenant: str = "alpha") -> list[pb.Task]:
        async with client_for(mesh) as first, client_for(mesh, second_tenant) as second:
            one = await first.submit("pipeline", _spec(log, share))
            await wait_for_action_processes(mesh, "sleep", 1)
            two = await second.submit("pipeline", _spec(log, share))
            done = [await first.wait(one.id), await second.wait(two.id)]
            for task in done:
                assert task.state == pb.TASK_STATE_SUCCEEDED, task.error
                assert json.loads(task.result_json)["steps"]["test"]["stdout"] == "done\n"
            if share and second_tenant == "alpha":
                notes = [e.data_json for e in await _events(second, two.id) if e.kind == "log"]
                assert any("shared the result" in n for n in notes), notes
                step = json.loads(done[1].result_json)["steps"]["test"]
                assert not step.get("cost", {}).get("cpu_ms"), step  # the run was paid for once
            return done

    shared = shared_dir / "shared"
    run(pair(shared, share=True))
    assert _runs(shared) == 1
    apart = shared_dir / "apart"
    run(pair(apart, share=False))
    assert _runs(apart) == 2
    tenants = shared_dir / "tenants"
    run(pair(tenants, share=True, second_tenant="beta"))
    assert _runs(tenants) == 2  # never across tenants


def test_a_joiner_whose_run_was_cancelled_runs_its_own(own_mesh, shared_dir: Path) -> None:  # type: ignore[no-untyped-def]
    mesh = own_mesh(extra_env={"AGENTMESH_SHARED_DIR": str(shared_dir)})
    log = shared_dir / "runs"

    async def go() -> None:
        async with client_for(mesh) as client:
            owner = await client.submit("pipeline", _spec(log))
            await wait_for_action_processes(mesh, "sleep", 1)
            joiner = await client.submit("pipeline", _spec(log))
            await asyncio.sleep(0.2)  # it has joined the owner's run by now
            await client.cancel(owner.id)
            done = await client.wait(joiner.id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            assert json.loads(done.result_json)["steps"]["test"]["stdout"] == "done\n"
            assert (await client.wait(owner.id)).state == pb.TASK_STATE_CANCELLED

    run(go())
    assert _runs(log) == 2
