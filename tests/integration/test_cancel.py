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
from services.runtime.errors import FailedPrecondition
from services.runtime.procs import pid_alive
from tests.conftest import client_for, run


def _tree_spec(pid_file: Path) -> dict:
    # A shell that records its pid, a child that escapes into its own session, and a plain child.
    command = (
        f"echo $$ >> {pid_file}; "
        f"setsid sh -c 'echo $$ >> {pid_file}; sleep 600' & "
        f"sh -c 'echo $$ >> {pid_file}; sleep 600' & "
        f"sleep 600 & echo $! >> {pid_file}; wait"
    )
    return {"steps": [{"id": "tree", "tool": "shell", "args": {"command": command}, "timeout_s": 900}]}


def _wait_for_pids(pid_file: Path, count: int) -> list[int]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if pid_file.exists():
            pids = [int(p) for p in pid_file.read_text().split()]
            if len(pids) >= count:
                return pids
        time.sleep(0.02)
    raise AssertionError(
        f"the task's processes did not start: {pid_file.read_text() if pid_file.exists() else ''}"
    )


def test_cancel_kills_the_whole_process_tree(mesh: Mesh, tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"

    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", _tree_spec(pid_file))
            pids = _wait_for_pids(pid_file, 4)
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


def test_no_workspace_or_cgroup_left_behind(mesh: Mesh, tmp_path: Path) -> None:
    before = {p for p in os.listdir("/tmp") if p.startswith("agentmesh-ws-")}
    pid_file = tmp_path / "pids"

    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", _tree_spec(pid_file))
            _wait_for_pids(pid_file, 4)
            await client.cancel(task.id)
            await client.wait(task.id)

    run(go())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = {p for p in os.listdir("/tmp") if p.startswith("agentmesh-ws-")} - before
        if not left:
            break
        time.sleep(0.05)
    assert not left
