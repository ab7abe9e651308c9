"""More faults that must not lose or hang work: the inference worker killed with -9 mid-generation and
started again (the step waits for its model and runs again), and a cancel while the bus is down
(it still stops the work, through the executor session)."""

from __future__ import annotations

import asyncio
import json
import time

from agentmesh.local import Mesh
from protos.agentmesh.v1 import common_pb2 as pb
from tests.conftest import client_for, inference_running, run, survivors, wait_for_action_processes

LONG = {
    "steps": [
        {
            "id": "say",
            "tool": "infer",
            "args": {"prompt": "Count from one to five hundred.", "max_tokens": 200},
        }
    ]
}


def test_an_inference_worker_killed_mid_generation_comes_back_and_the_step_runs_again(
    model_mesh: Mesh,
) -> None:
    async def go() -> pb.Task:
        async with client_for(model_mesh) as client:
            task = await client.submit("pipeline", LONG)
            deadline = time.monotonic() + 60
            while inference_running(model_mesh) < 1:
                assert time.monotonic() < deadline, "the generation never started"
                await asyncio.sleep(0.01)
            model_mesh.kill9("inference")
            child = model_mesh.children["inference"]
            child.is_ready = False
            child.start()  # as `agentmesh up` would: the step waits for it, not failing meanwhile
            return await asyncio.wait_for(client.wait(task.id), 180)

    try:
        done = run(go())
    finally:
        model_mesh.sup.wait_ready(120)
    assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
    step = json.loads(done.result_json)["steps"]["say"]
    assert step["status"] == "ok" and step["attempts"] == 1  # a lost worker spends no attempt
    assert step["output"]["text"] and done.cost.tokens_out > 0


def test_a_cancel_with_the_bus_down_still_stops_the_work(own_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = own_mesh()
    slow = {
        "steps": [{"id": "slow", "tool": "shell", "args": {"command": "exec sleep 600"}, "timeout_s": 900}]
    }

    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", slow)
            pids = await wait_for_action_processes(mesh, "sleep", 1)
            mesh.kill9("bus")
            await client.cancel(task.id)
            done = await asyncio.wait_for(client.wait(task.id), 30)
            assert done.state == pb.TASK_STATE_CANCELLED
            assert not await survivors(pids, 10)

    run(go())
