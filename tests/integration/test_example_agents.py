"""The agents in examples/agents/ and the one in the README run as their docs say."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agentmesh.local import Mesh
from protos.agentmesh.v1 import common_pb2 as pb
from tests.conftest import client_for, run, run_mesh

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "agents"


def readme_agent(into: Path) -> Path:
    """The README's agent, as a file of its own (the first python block after 'Your own agent')."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your own agent") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    path = into / "readme_agents.py"
    path.write_text(code)
    return path


@pytest.fixture(scope="module")
def examples_mesh(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("examples")
    files = [EXAMPLES / "ops.py", EXAMPLES / "shards.py", readme_agent(root)]
    env = {"AGENTMESH_AGENTS": ",".join(map(str, files)), "AGENTMESH_STRICT": "true"}
    yield from run_mesh(root, request, extra_env=env)


def test_the_ops_agent_diagnoses_asks_applies_and_verifies(examples_mesh: Mesh) -> None:
    spec = json.loads((EXAMPLES / "ops_input.json").read_text())

    async def go() -> None:
        async with client_for(examples_mesh) as client:
            task = await client.submit("ops-fix", spec)
            async for event in client.watch(task.id):
                if event.kind == "input.requested":
                    prompt = json.loads(event.data_json)["prompt"]
                    break
            assert "workers -> 4" in prompt and "timeout_s -> 30" in prompt, prompt
            refused = await client.send_input(task.id, {"approve": "maybe"})  # does not fit Approval
            assert refused.delivered
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_FAILED and done.error.reason == "INVALID_INPUT", done.error
            task = await client.submit("ops-fix", spec)
            await client.send_input(task.id, {"approve": True, "by": "ops@example"})
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            result = json.loads(done.result_json)
            assert result["healthy"] and result["approved_by"] == "ops@example"
            assert result["config"] == {"workers": 4, "timeout_s": 30, "log_level": "INFO", "port": 8080}

    run(go())


def test_the_shard_pipeline_fans_out_and_reduces(examples_mesh: Mesh) -> None:
    rows = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]

    async def go() -> None:
        async with client_for(examples_mesh) as client:
            done = await client.wait((await client.submit("shard-stats", {"rows": rows, "shards": 3})).id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            result = json.loads(done.result_json)
            assert result == {"shards": 3, "count": 10, "sum": 39, "mean": 3.9, "min": 1, "max": 9}
            listed = await client.list(limit=100)
            children = [t for t in listed.tasks if t.parent_id == done.id]
            assert len(children) == 3 and all(c.agent == "shard-stat" for c in children)

    run(go())


def test_the_readme_agent_runs(examples_mesh: Mesh) -> None:
    async def go() -> None:
        async with client_for(examples_mesh) as client:
            task = await client.submit("squares", {"n": 5})
            await client.send_input(task.id, True)
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            assert json.loads(done.result_json) == {"sum": 30}

    run(go())


def test_the_research_agent_runs_on_the_embedded_models(own_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = own_mesh(models=True, extra_env={"AGENTMESH_AGENTS": str(EXAMPLES / "research.py")})
    question = {"question": "Why is the sky blue?", "angles": 2, "max_tokens": 24}

    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit("research", question)
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            result = json.loads(done.result_json)
            assert result["answer"] and 1 <= len(result["notes"]) <= 2 and result["tokens"] > 0
            events = [e async for e in client.watch(task.id)]
            assert any(e.kind == "action.output" for e in events)  # tokens streamed
            assert [json.loads(e.data_json)["angles"] for e in events if e.kind == "agent.answers"] == [
                len(result["angles"])
            ]

    run(go())
