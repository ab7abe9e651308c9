"""`agentmesh.testing.mesh_fixture`: what a user's own tests of their agents start from."""

from __future__ import annotations

import json
from pathlib import Path

from agentmesh.testing import AgentMesh, mesh_fixture
from protos.agentmesh.v1 import common_pb2 as pb
from tests.conftest import run

mesh = mesh_fixture(Path(__file__).resolve().parents[1] / "fixtures" / "sdk_agents.py")


def test_the_fixture_serves_the_agents_in_strict_mode(mesh: AgentMesh) -> None:
    async def go() -> None:
        async with mesh.client() as client:
            done = await client.wait((await client.submit("sdk-seq", {"n": 3})).id)
            assert done.state == pb.TASK_STATE_SUCCEEDED and json.loads(done.result_json) == {"total": 3}
            clock = await client.wait((await client.submit("sdk-clock", {})).id)
            assert clock.error.reason == "NONDETERMINISTIC_CALL"

    run(go())
