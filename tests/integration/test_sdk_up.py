"""`agentmesh up --agents FILE`: an agent file anywhere on disk, never installed, served by the mesh."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
from pathlib import Path

from agentmesh.client import AgentMeshClient
from agentmesh.local import reap_up, up_command, wait_ready_file
from protos.agentmesh.v1 import common_pb2 as pb
from tests.fixtures.greeter import write_greeter

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "sdk_agents.py"


def test_up_serves_an_agent_file_named_relative_to_where_it_runs(tmp_path: Path) -> None:
    work = tmp_path / "somewhere"
    work.mkdir()
    shutil.copy(FIXTURE, work / "my_agents.py")
    ready = tmp_path / "ready.json"
    argv, env = up_command(tmp_path / "data", ready)
    argv += ["--agents", "my_agents.py"]
    address = argv[argv.index("--coordinator-addr") + 1]
    up = subprocess.Popen(argv, env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pids: list[int] = []
    try:
        pids = list(wait_ready_file(up, ready)["pids"].values())
        key = (tmp_path / "data" / "default.key").read_text().strip()

        async def go() -> pb.Task:
            async with AgentMeshClient(address, key) as client:
                names = {a.name: a.version for a in (await client.list_agents()).agents}
                assert names["sdk-seq"] == "1" and "pipeline" in names
                return await client.wait((await client.submit("sdk-seq", {"n": 4})).id)

        done = asyncio.run(asyncio.wait_for(go(), 60))
        assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
        assert json.loads(done.result_json) == {"total": 6}
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
    finally:
        reap_up(up, pids)


def test_dev_reloads_changed_agents_and_keeps_versions_still_in_use(tmp_path: Path) -> None:
    """`agentmesh dev`: a change of code under the same version replaces the worker; a new version
    starts beside the old one, whose parked task then finishes on it; code that does not load
    changes nothing."""
    work = tmp_path / "agents"
    work.mkdir()
    code = Path(write_greeter(work, "1", name="greeter.py"))
    ready = tmp_path / "ready.json"
    argv, env = up_command(tmp_path / "data", ready)
    argv[argv.index("up")] = "dev"
    argv += ["--agents", str(code)]
    address = argv[argv.index("--coordinator-addr") + 1]
    dev = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pids: list[int] = []
    try:
        pids = list(wait_ready_file(dev, ready)["pids"].values())
        key = (tmp_path / "data" / "default.key").read_text().strip()

        async def versions(client: AgentMeshClient) -> list[tuple[str, list[str]]]:
            agents = {a.name: a for a in (await client.list_agents()).agents}
            return [(v.version, list(v.workers)) for v in agents["greeter"].versions]

        async def until(client: AgentMeshClient, expected: list[tuple[str, list[str]]]) -> None:
            for _ in range(600):
                if await versions(client) == expected:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"{await versions(client)} != {expected}")

        async def go() -> None:
            async with AgentMeshClient(address, key) as client:
                await until(client, [("1", ["dev-1"])])
                parked = await client.submit("greeter", {"ask": True})
                while (await client.get(parked.id)).state != pb.TASK_STATE_WAITING:
                    await asyncio.sleep(0.05)
                write_greeter(work, "1", description="same version, new words", name="greeter.py")
                await until(client, [("1", ["dev-2"])])
                write_greeter(work, "2", steps=3, name="greeter.py")
                await until(client, [("2", ["dev-3"]), ("1", ["dev-2"])])
                code.write_text("this is not python\n")
                await asyncio.sleep(2.0)
                assert await versions(client) == [("2", ["dev-3"]), ("1", ["dev-2"])]
                fresh = await client.wait((await client.submit("greeter", {})).id)
                assert json.loads(fresh.result_json)["seen"] == [0, 1, 2, "last"]
                await client.send_input(parked.id, {"ok": 1})
                done = await client.wait(parked.id)
                assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
                assert json.loads(done.result_json)["version"] == "1"

        asyncio.run(asyncio.wait_for(go(), 120))
        pids += json.loads(ready.read_text())["workers"].values()
        dev.send_signal(signal.SIGTERM)
        assert dev.wait(30) == 0
        output = dev.stdout.read().decode()  # type: ignore[union-attr]
        assert "dev-4 did not start" in output and "dev-1 replaced" in output, output
    finally:
        reap_up(dev, pids)
