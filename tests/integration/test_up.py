"""`agentmesh up` starts the six services and SIGTERM stops all of them, exit 0, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from agentmesh.local import reap_up, up_command, wait_ready_file
from services.runtime.procs import pid_alive


def test_up_then_sigterm_stops_everything(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    argv, env = up_command(tmp_path / "data", ready)
    up = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pids: list[int] = []
    try:
        pids = list(wait_ready_file(up, ready)["pids"].values())
        assert len(pids) == 6 and all(pid_alive(p) for p in pids)
        assert (tmp_path / "data" / "default.key").exists()
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
        output = up.stdout.read().decode()  # type: ignore[union-attr]
        assert "API key for tenant default" in output
        assert not [p for p in pids if pid_alive(p)]
        assert "=0" in output and "=-" not in output.split("stopped:")[-1], output
    finally:
        reap_up(up, pids)


def test_a_stopped_executor_leaves_no_cgroup_or_workspace(tmp_path: Path) -> None:
    from agentmesh.local import Mesh
    from services.executor import cgroups

    mesh = Mesh(tmp_path)
    try:
        mesh.start()
        instance = "exec-" + mesh.env["AGENTMESH_EXECUTOR_ADDR"].rsplit(":", 1)[1]
        base = cgroups.kill_base(instance)
        assert base is not None and base.is_dir()
        workspaces = Path(os.environ.get("TMPDIR", "/tmp")) / f"agentmesh-ws-{instance}"
        assert workspaces.is_dir()
        executor = mesh.children["executor"]
        os.kill(executor.pid, signal.SIGTERM)
        executor.proc.wait(20)  # type: ignore[union-attr]
        assert not base.exists() and not workspaces.exists()
    finally:
        mesh.stop()
