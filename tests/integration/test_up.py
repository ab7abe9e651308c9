"""`agentmesh up` starts the six services and SIGTERM stops all of them, exit 0, no orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.runtime.procs import free_port


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def test_up_then_sigterm_stops_everything(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    flags = [
        "--data-dir",
        str(tmp_path / "data"),
        "--ready-file",
        str(ready),
        "--coordinator-addr",
        f"127.0.0.1:{free_port()}",
        "--planner-addr",
        f"127.0.0.1:{free_port()}",
        "--executor-addr",
        f"127.0.0.1:{free_port()}",
        "--inference-addr",
        f"127.0.0.1:{free_port()}",
        "--gateway-addr",
        f"127.0.0.1:{free_port()}",
        "--bus-pub-addr",
        f"tcp://127.0.0.1:{free_port()}",
        "--bus-sub-addr",
        f"tcp://127.0.0.1:{free_port()}",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
    up = subprocess.Popen(
        [sys.executable, "-m", "agentmesh", "up", *flags],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline and up.poll() is None:
            time.sleep(0.05)
        assert ready.exists(), up.stdout.read().decode() if up.poll() is not None else "not ready in 60s"  # type: ignore[union-attr]
        pids = list(json.loads(ready.read_text())["pids"].values())
        assert len(pids) == 6 and all(_alive(p) for p in pids)
        assert (tmp_path / "data" / "default.key").exists()
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
        output = up.stdout.read().decode()  # type: ignore[union-attr]
        assert "API key for tenant default" in output
        assert not [p for p in pids if _alive(p)]
        assert "=0" in output and "=-" not in output.split("stopped:")[-1], output
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
