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
