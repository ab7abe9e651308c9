"""The model-driven agents end to end on the embedded SmolLM2. codegen: generation on the inference
worker, tests in the sandbox, the scan, and what happens when the model cannot solve it, the budget
runs out, or the task is cancelled mid-generation; react: the loop ends by its rules. Small
max_tokens keep each run to seconds on the CPU."""

from __future__ import annotations

import asyncio
import json
import time

from agentmesh.local import Mesh
from protos.agentmesh.v1 import common_pb2 as pb
from services.runtime.procs import grpc_ready, tcp_ready
from tests.conftest import client_for, inference_running, run, wait_inference_idle

ADD = {
    "spec": "Write a Python function add(a, b) that returns the sum of a and b.",
    "tests": "from solution import add\n\ndef test_add():\n    assert add(2, 3) == 5\n    assert add(-4, 1) == -3\n",  # noqa: E501
    "entrypoint": "add",
    "max_tokens": 96,
}


def test_codegen_solves_a_problem_the_model_can_and_the_code_passes_in_a_fresh_sandbox(
    model_mesh: Mesh,
) -> None:
    async def go() -> None:
        async with client_for(model_mesh) as client:
            done = await client.wait((await client.submit("codegen", {**ADD, "candidates": 2})).id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            result = json.loads(done.result_json)
            assert result["passed"] and "def add" in result["code"]
            assert result["scan"] is not None and "findings" in result["scan"]
            assert result["tokens"]["out"] > 0 and done.cost.tokens_out == result["tokens"]["out"]
            assert done.cost.usd > 0
            outcomes = [c["outcome"] for c in result["reports"][-1]["candidates"]]
            assert "passed" in outcomes
            # The winner really passes: run its tests again, from scratch, in another sandbox.
            check = {
                "steps": [
                    {
                        "id": "again",
                        "tool": "pytest",
                        "files": {"solution.py": result["code"], "test_solution.py": ADD["tests"]},
                    }
                ]
            }
            again = await client.wait((await client.submit("pipeline", check)).id)
            assert again.state == pb.TASK_STATE_SUCCEEDED, again.result_json

    run(go())
    assert not model_mesh.action_processes()


def test_codegen_on_an_impossible_problem_fails_after_exactly_max_attempts(model_mesh: Mesh) -> None:
    impossible = {
        **ADD,
        "tests": "from solution import add\n\ndef test_add():\n    assert add(1, 1) == 3\n",
        "candidates": 2,
        "max_attempts": 2,
        "max_tokens": 64,
    }

    async def go() -> None:
        async with client_for(model_mesh) as client:
            done = await client.wait((await client.submit("codegen", impossible)).id)
            assert done.state == pb.TASK_STATE_FAILED and done.error.reason == "TESTS_FAILED", done.error
            result = json.loads(done.result_json)
            assert result["attempts"] == 2 and len(result["reports"]) == 2
            for report in result["reports"]:
                assert len(report["candidates"]) == 2
                assert all(c["outcome"] in ("failed", "no_code") for c in report["candidates"])
            tested = [c for r in result["reports"] for c in r["candidates"] if c["outcome"] == "failed"]
            assert all(c["tests"]["failed"] >= 1 for c in tested if "tests" in c)

    run(go())
    assert not model_mesh.action_processes()


def test_a_budget_smaller_than_one_generation_stops_codegen(model_mesh: Mesh) -> None:
    async def go() -> None:
        async with client_for(model_mesh) as client:
            task = await client.submit("codegen", {**ADD, "candidates": 3}, budget_usd=1e-9)
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_FAILED and done.error.reason == "BUDGET_EXCEEDED", done.error

    run(go())
    assert wait_inference_idle(model_mesh) == 0
    assert not model_mesh.action_processes()


def test_a_token_budget_stops_the_task_and_its_children_share_it(model_mesh: Mesh) -> None:
    infer = {"id": "say", "tool": "infer", "args": {"prompt": "Count from one to fifty.", "max_tokens": 64}}
    # Two children with half of the parent's 80 tokens each: the prompt is 36 tokens, and the greedy
    # answer 17 more, so each passes its 40 and stops with BUDGET_EXCEEDED, and the join fails.
    spec = {"steps": [{"id": "fan", "tool": "spawn", "args": {"inputs": [{"steps": [infer]}] * 2}}]}

    async def go() -> None:
        async with client_for(model_mesh) as client:
            alone = await client.wait(
                (await client.submit("pipeline", {"steps": [infer]}, budget_tokens=10)).id
            )
            assert alone.state == pb.TASK_STATE_FAILED and alone.error.reason == "BUDGET_EXCEEDED", (
                alone.error
            )
            assert "token budget" in alone.error.message
            parent = await client.wait((await client.submit("pipeline", spec, budget_tokens=80)).id)
            assert parent.state == pb.TASK_STATE_FAILED
            page = await client.list(limit=50)
            kids = [t for t in page.tasks if t.parent_id == parent.id]
            assert len(kids) == 2
            for kid in kids:
                assert kid.budget.tokens == 40, kid.budget
                assert kid.state == pb.TASK_STATE_FAILED and kid.error.reason == "BUDGET_EXCEEDED", kid.error
            assert parent.cost.tokens_in + parent.cost.tokens_out == sum(
                k.cost.tokens_in + k.cost.tokens_out for k in kids
            )

    run(go())
    assert wait_inference_idle(model_mesh) == 0


def test_cancelling_codegen_mid_generation_stops_every_candidate(model_mesh: Mesh) -> None:
    async def go() -> None:
        async with client_for(model_mesh) as client:
            task = await client.submit("codegen", {**ADD, "candidates": 4, "max_tokens": 1000})
            # The candidates generate in child tasks: cancel the parent once generations run.
            for _ in range(600):
                if inference_running(model_mesh) >= 1:
                    break
                await asyncio.sleep(0.01)
            await client.cancel(task.id)
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_CANCELLED
            page = await client.list(limit=50)
            kids = [t for t in page.tasks if t.parent_id == task.id]
            # Each child ends once its generation stopped and was charged: a moment after the parent.
            ends = await asyncio.wait_for(asyncio.gather(*(client.wait(k.id) for k in kids)), 20)
            assert len(kids) == 4 and all(k.state == pb.TASK_STATE_CANCELLED for k in ends), ends

    run(go())
    assert wait_inference_idle(model_mesh) == 0
    assert not model_mesh.action_processes()


def test_react_on_the_embedded_model_ends_cleanly_within_its_steps(model_mesh: Mesh) -> None:
    goal = 'What is 6 times 7? Use the python tool: {"tool": "python", "args": {"code": "print(6*7)"}}'

    async def go() -> None:
        async with client_for(model_mesh) as client:
            task = await client.submit("react", {"goal": goal, "max_steps": 3, "max_tokens": 64})
            done = await client.wait(task.id)
            # A 135M model may or may not get there; either way the loop must end by the rules.
            assert done.state in (pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED), done
            result = json.loads(done.result_json)
            assert 1 <= len(result["steps"]) <= 3
            if done.state == pb.TASK_STATE_FAILED:
                assert done.error.reason == "MAX_STEPS"
            for step in result["steps"]:
                assert step["call"] is not None or step["problem"]

    run(go())
    assert not model_mesh.action_processes()


def test_an_infer_step_sent_while_the_model_loads_waits_for_it(model_mesh: Mesh) -> None:
    say = {"steps": [{"id": "say", "tool": "infer", "args": {"prompt": "Say hi.", "max_tokens": 8}}]}
    address = model_mesh.env["AGENTMESH_INFERENCE_ADDR"]
    model_mesh.kill9("inference")
    child = model_mesh.children["inference"]
    child.is_ready = False
    child.start()
    try:
        # Its port answers (health NOT_SERVING) seconds before its model is in: send the step then.
        deadline = time.monotonic() + 60
        while not tcp_ready(address)() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not grpc_ready(address)(), "the model loaded before the step could be sent"

        async def go() -> None:
            async with client_for(model_mesh) as client:
                done = await client.wait((await client.submit("pipeline", say)).id)
                assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
                notes = [e.data_json async for e in client.watch(done.id) if e.kind == "log"]
                assert any("MODELS_LOADING" in n for n in notes), notes

        run(go())
    finally:
        model_mesh.sup.wait_ready(120)
