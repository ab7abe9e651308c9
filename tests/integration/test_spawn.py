"""Child tasks: fan-out from a pipeline step, joined as all / any / fail-fast, cancelled with the parent."""

from __future__ import annotations

import asyncio
import json

from agentmesh.local import Mesh
from protos.agentmesh.v1 import common_pb2 as pb
from tests.conftest import client_for, run, survivors, wait_for_action_processes


def child(code: str) -> dict:
    return {"steps": [{"id": "work", "tool": "python", "args": {"code": code}}]}


def sleeper() -> dict:
    return {"steps": [{"id": "work", "tool": "shell", "args": {"command": "exec sleep 600"}}]}


def spawn_spec(inputs: list[dict], join: str) -> dict:
    return {
        "steps": [
            {"id": "fan", "tool": "spawn", "args": {"inputs": inputs, "join": join}},
            {"id": "after", "tool": "echo", "args": {"done": True}, "depends_on": ["fan"]},
        ]
    }


def test_fan_out_joined_all(mesh: Mesh) -> None:
    async def go() -> None:
        async with client_for(mesh) as client:
            spec = spawn_spec([child(f"print({i} * {i})") for i in range(4)], "all")
            done = await client.wait((await client.submit("pipeline", spec, priority=5)).id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            fan = json.loads(done.result_json)["steps"]["fan"]
            children = fan["output"]["children"]
            assert [c["state"] for c in children] == ["SUCCEEDED"] * 4
            assert sorted(c["result"]["steps"]["work"]["stdout"] for c in children) == [
                "0\n",
                "1\n",
                "4\n",
                "9\n",
            ]
            for c in children:
                kid = await client.get(c["id"])
                assert kid.parent_id == done.id and kid.priority == 5
            assert json.loads(done.result_json)["steps"]["after"]["status"] == "ok"

    run(go())


def test_fail_fast_cancels_the_siblings(mesh: Mesh) -> None:
    async def go() -> None:
        async with client_for(mesh) as client:
            spec = spawn_spec(
                [sleeper(), child("import time; time.sleep(0.5); raise SystemExit(3)")], "fail_fast"
            )
            task = await client.submit("pipeline", spec)
            pids = await wait_for_action_processes(mesh, "sleep", 1)
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_FAILED
            fan = json.loads(done.result_json)["steps"]["fan"]
            assert fan["status"] == "failed" and fan["error"]["reason"] == "CHILD_FAILED"
            # The parent's error carries the failed child's own.
            assert "STEP_FAILED" in fan["error"]["message"], fan["error"]
            assert json.loads(done.result_json)["steps"]["after"]["status"] == "skipped"
            assert not await survivors(pids, 5), "a fail-fast sibling's process outlived the join"
            states = [c["state"] for c in fan["output"]["children"]]
            assert states == ["CANCELLED", "FAILED"], fan["output"]

    run(go())


def test_any_takes_the_first_success_and_cancels_the_rest(mesh: Mesh) -> None:
    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit(
                "pipeline", spawn_spec([sleeper(), child("import time; time.sleep(1); print('fast')")], "any")
            )
            pids = await wait_for_action_processes(mesh, "sleep", 1)
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            assert not await survivors(pids, 5), "the losing sibling's process outlived the join"
            children = json.loads(done.result_json)["steps"]["fan"]["output"]["children"]
            assert [c["state"] for c in children] == ["CANCELLED", "SUCCEEDED"], children

    run(go())


def test_cancelling_the_parent_cancels_its_children(mesh: Mesh) -> None:
    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", spawn_spec([sleeper()], "all"))
            pids = await wait_for_action_processes(mesh, "sleep", 1)
            await client.cancel(task.id)
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_CANCELLED
            assert not await survivors(pids, 5)
            page = await client.list(limit=50)
            kids = [t for t in page.tasks if t.parent_id == task.id]
            # Each child ends on its own once its cancel is durable: after its action stopped and
            # reported what it used, which may be a moment after the parent's own end.
            ends = await asyncio.wait_for(asyncio.gather(*(client.wait(k.id) for k in kids)), 20)
            assert kids and all(k.state == pb.TASK_STATE_CANCELLED for k in ends)

    run(go())


def test_invalid_child_input_is_refused_at_submit(mesh: Mesh) -> None:
    from services.runtime.errors import InvalidArgument

    async def go() -> None:
        async with client_for(mesh) as client:
            try:
                await client.submit("pipeline", spawn_spec([{"steps": [{"id": "x", "tool": "nope"}]}], "all"))
            except InvalidArgument as exc:
                assert any("inputs[0]" in field for field, _ in exc.field_violations)
            else:
                raise AssertionError("a bad child input was accepted")

    run(go())


def test_children_spend_a_share_of_the_parent_budget_and_the_parent_pays_for_them(mesh: Mesh) -> None:
    async def go() -> None:
        async with client_for(mesh) as client:
            spec = spawn_spec([child("print(sum(range(10**5)))") for _ in range(2)], "all")
            done = await client.wait((await client.submit("pipeline", spec, budget_usd=0.5)).id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            kids = [
                await client.get(c["id"])
                for c in json.loads(done.result_json)["steps"]["fan"]["output"]["children"]
            ]
            assert all(abs(k.budget.usd - 0.25) < 1e-9 for k in kids)  # an equal share of what was left
            children_cpu = sum(k.cost.cpu_ms for k in kids)
            assert children_cpu > 0 and done.cost.cpu_ms >= children_cpu
            assert done.cost.usd >= sum(k.cost.usd for k in kids) - 1e-12  # float sums

    run(go())


def test_a_spawn_over_shards_runs_one_child_per_shard_and_joins_their_results(mesh: Mesh) -> None:
    code = "import json; print(sum(json.load(open('shard.json'))))"
    spec = {
        "steps": [
            {
                "id": "fan",
                "tool": "spawn",
                "args": {
                    "shard": {"items": list(range(1, 11)), "count": 3},
                    "template": {"steps": [{"id": "sum", "tool": "python", "args": {"code": code}}]},
                },
            }
        ]
    }

    async def go() -> None:
        async with client_for(mesh) as client:
            done = await client.wait((await client.submit("pipeline", spec)).id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            children = json.loads(done.result_json)["steps"]["fan"]["output"]["children"]
            sums = [int(c["result"]["steps"]["sum"]["stdout"]) for c in children]
            assert sums == [sum([1, 2, 3]), sum([4, 5, 6]), sum([7, 8, 9, 10])]

    run(go())


def test_a_parent_waits_holding_no_worker_and_cancelling_it_cancels_its_grandchildren(mesh: Mesh) -> None:
    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", spawn_spec([spawn_spec([sleeper()], "all")], "all"))
            pids = await wait_for_action_processes(mesh, "sleep", 1)
            page = await client.list(limit=100)
            children = [t for t in page.tasks if t.parent_id == task.id]
            grandchildren = [t for t in page.tasks if children and t.parent_id == children[0].id]
            assert len(children) == 1 and len(grandchildren) == 1
            # Both the parent and the child wait on their spawns as WAITING: no worker, no run.
            for waiting in (task.id, children[0].id):
                assert (await client.get(waiting)).state == pb.TASK_STATE_WAITING
            await client.cancel(task.id)
            assert (await client.wait(task.id)).state == pb.TASK_STATE_CANCELLED
            for descendant in (children[0].id, grandchildren[0].id):
                assert (await client.wait(descendant)).state == pb.TASK_STATE_CANCELLED
            assert not await survivors(pids, 5), "the grandchild's process outlived the cancel"

    run(go())
