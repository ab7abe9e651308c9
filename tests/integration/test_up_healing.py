"""`agentmesh up` heals: each service killed with -9 in turn while tasks run comes back by itself,
`agentmesh health` shows the restart, and every task ends exactly once. A service that keeps dying
is a crash loop, and the mesh stops."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agentmesh.client import AgentMeshClient
from agentmesh.local import reap_up, up_command, wait_ready_file
from protos.agentmesh.v1 import common_pb2 as pb
from services.runtime.procs import pid_alive

KILLED_IN_TURN = ("coordinator", "planner", "executor", "bus", "gateway", "inference")


def slow_pipeline(index: int) -> dict[str, Any]:
    # Re-run safely if cut off: the test is about every task ending once, not about ambiguity.
    nap = {"code": f"import time; time.sleep(1.0); print({index})"}
    return {
        "steps": [
            {"id": "nap", "tool": "python", "args": nap, "on_ambiguous": "rerun"},
            {"id": "say", "tool": "echo", "args": {"i": index}, "depends_on": ["nap"]},
        ]
    }


def start_up(tmp_path: Path, *flags: str) -> tuple[subprocess.Popen[bytes], Path, list[str], dict[str, str]]:
    ready = tmp_path / "ready.json"
    argv, env = up_command(tmp_path / "data", ready)
    env.update(AGENTMESH_GENERATE_MODEL="none", AGENTMESH_EMBED_MODEL="none", AGENTMESH_SHUTDOWN_GRACE_S="3")
    env["COLUMNS"] = "250"  # rich wraps at 80 columns when not on a terminal
    up = subprocess.Popen([*argv, *flags], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return up, ready, argv, env


def health(data_dir: Path) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "agentmesh", "health", "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.returncode, json.loads(done.stdout or "{}")


def wait_healthy(data_dir: Path, deadline_s: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + deadline_s
    while True:
        code, report = health(data_dir)
        if code == 0:
            return report
        assert time.monotonic() < deadline, f"not healthy again within {deadline_s}s: {report}"
        time.sleep(0.2)


def test_each_service_killed_in_turn_comes_back_and_every_task_ends_once(tmp_path: Path) -> None:
    up, ready, argv, _ = start_up(tmp_path)
    data_dir = tmp_path / "data"
    seen: set[int] = set()
    try:
        seen.update(wait_ready_file(up, ready)["pids"].values())
        address = argv[argv.index("--coordinator-addr") + 1]
        key = (data_dir / "default.key").read_text().strip()

        async def submit(count: int, start: int) -> list[str]:
            async with AgentMeshClient(address, key) as client:
                return [(await client.submit("pipeline", slow_pipeline(start + i))).id for i in range(count)]

        task_ids = asyncio.run(submit(4, 0))
        for name in KILLED_IN_TURN:
            pid = json.loads(ready.read_text())["pids"][name]
            os.kill(pid, signal.SIGKILL)
            report = wait_healthy(data_dir)
            service = report["services"][name]
            assert service["restarts"] == 1 and service["last_exit"] == "killed by SIGKILL", service
            assert service["pid"] != pid and pid_alive(service["pid"])
            seen.update(json.loads(ready.read_text())["pids"].values())
            task_ids += asyncio.run(submit(2, len(task_ids)))

        async def settle() -> list[tuple[pb.Task, int]]:
            async with AgentMeshClient(address, key) as client:
                ended = []
                for task_id in task_ids:
                    events = [e async for e in client.watch(task_id)]
                    terminal = [
                        e for e in events if e.kind == "state" and json.loads(e.data_json)["terminal"]
                    ]
                    ended.append((await client.get(task_id), len(terminal)))
                return ended

        ended = asyncio.run(asyncio.wait_for(settle(), 120))
        for task, terminal_events in ended:
            assert task.state == pb.TASK_STATE_SUCCEEDED, (task.id, task.error)
            assert terminal_events == 1, task.id
        assert json.loads(ended[0][0].result_json)["steps"]["say"]["output"] == {"i": 0}
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
        output = up.stdout.read().decode()  # type: ignore[union-attr]
        assert output.count("killed by SIGKILL") == len(KILLED_IN_TURN), output
        assert not [p for p in seen if pid_alive(p)]
        assert health(data_dir)[0] == 1  # stopped: no longer healthy
    finally:
        reap_up(up, list(seen))


def test_a_service_that_keeps_dying_stops_the_mesh_as_a_crash_loop(tmp_path: Path) -> None:
    up, ready, _, _ = start_up(tmp_path, "--restarts", "1")
    seen: set[int] = set()
    try:
        seen.update(wait_ready_file(up, ready)["pids"].values())
        deadline = time.monotonic() + 90
        kills = 0
        while up.poll() is None and time.monotonic() < deadline:
            pid = json.loads(ready.read_text())["pids"]["planner"]
            seen.add(pid)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
                kills += 1
            time.sleep(0.2)
        assert up.wait(60) == 1
        output = up.stdout.read().decode()  # type: ignore[union-attr]
        assert kills == 2 and "crash loop" in output, output
        seen.update(json.loads(ready.read_text())["pids"].values())
        assert not [p for p in seen if pid_alive(p)]
        status = json.loads((tmp_path / "data" / "mesh.json").read_text())["services"]["planner"]
        assert status["restarts"] == 1 and status["state"] == "crash-loop"
    finally:
        reap_up(up, list(seen))
