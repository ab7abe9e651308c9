"""infer and embed steps through the whole mesh, with the embedded default models."""

from __future__ import annotations

import json

from agentmesh.local import Mesh
from protos.agentmesh.v1 import common_pb2 as pb
from tests.conftest import cancel_once_streaming, client_for, run, wait_inference_idle


def test_pipeline_with_infer_and_embed_steps(model_mesh: Mesh) -> None:
    spec = {
        "steps": [
            {
                "id": "sum",
                "tool": "infer",
                "args": {"prompt": "What is the capital of France? One word.", "max_tokens": 16},
            },
            {"id": "vec", "tool": "embed", "args": {"texts": ["a", "b"]}},
        ]
    }

    async def go() -> None:
        async with client_for(model_mesh) as client:
            task = await client.submit("pipeline", spec)
            kinds = [e.kind async for e in client.watch(task.id)]
            done = await client.get(task.id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            steps = json.loads(done.result_json)["steps"]
            assert "Paris" in steps["sum"]["output"]["text"]
            assert steps["sum"]["cost"]["tokens_in"] > 0 and steps["sum"]["cost"]["tokens_out"] > 0
            vectors = steps["vec"]["output"]["vectors"]
            assert len(vectors) == 2 and len(vectors[0]) == 384
            assert done.cost.tokens_in > 0 and done.cost.usd > 0
            assert "action.output" in kinds  # tokens streamed as they were made

    run(go())


def test_cancelling_a_generation_stops_it(model_mesh: Mesh) -> None:
    spec = {
        "steps": [
            {
                "id": "long",
                "tool": "infer",
                "args": {"prompt": "Write a very long story.", "max_tokens": 1500},
            }
        ]
    }

    async def go() -> None:
        async with client_for(model_mesh) as client:
            task = await client.submit("pipeline", spec)
            done = await cancel_once_streaming(client, task.id)
            assert done.state == pb.TASK_STATE_CANCELLED
            # The cut-off generation is paid for: its prompt and the tokens it made before the cancel.
            assert done.cost.tokens_in > 0 and done.cost.tokens_out > 0, done.cost
            assert done.cost.tokens_out < 1500 and done.cost.usd > 0, done.cost
            finished = [
                json.loads(e.data_json) async for e in client.watch(task.id) if e.kind == "action.finished"
            ]
            assert [f["status"] for f in finished] == ["CANCELLED"], finished

    run(go())
    # The engine dropped the sequence: nothing left running in the batch.
    assert wait_inference_idle(model_mesh) == 0
