"""SDK agents on a real mesh: loaded from a file the planner was pointed at, never installed."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from agentmesh.local import TENANT_KEYS, Mesh
from agentmesh.testing import registered
from protos.agentmesh.v1 import common_pb2 as pb
from services.runtime.errors import AgentMeshError
from tests.conftest import client_for, run, run_mesh, wait_for_action_processes

AGENTS = str(Path(__file__).resolve().parents[1] / "fixtures" / "sdk_agents.py")
SDK_ENV = {"AGENTMESH_AGENTS": AGENTS, "AGENTMESH_STRICT": "true", "AGENTMESH_STEP_TIMEOUT_S": "3"}


@pytest.fixture(scope="module")
def sdk_mesh(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    yield from run_mesh(tmp_path_factory.mktemp("sdk"), request, extra_env=SDK_ENV)


def fingerprints(db: Path, task_id: str) -> list[list[str]]:
    """The task's journal as the store holds it: each decision's action fingerprints. The python
    steps' code names the task's own mark file, so for them only kind and tool are kept."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT body FROM decisions WHERE task_id = ? ORDER BY seq", (task_id,))
        bodies = [body for (body,) in rows]
    return [
        [
            a.fingerprint if a.exec.tool != "python" else "exec:python"
            for a in pb.Decision.FromString(b).actions
        ]
        for b in bodies
    ]


def test_an_agent_file_runs_and_shows_its_version_and_schema(sdk_mesh: Mesh) -> None:
    async def go() -> None:
        async with client_for(sdk_mesh) as client:
            task = await client.submit("sdk-mix", {"width": 3, "tail": 2, "ask": False})
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            result = json.loads(done.result_json)
            assert result["squares"] == [0, 1, 4] and result["winner_exit"] == 0
            assert result["child"] == {"sum": 3} and result["tail"] == [0, 1]
            assert result["rand"] == round(random.Random(task.id).random(), 9)
            assert result["usage_positive"] is True
            events = [e async for e in client.watch(task.id)]
            progress = [json.loads(e.data_json) for e in events if e.kind == "agent.progress"]
            assert progress == [{"squares": [0, 1, 4]}]

    run(go())
    headers = {"Authorization": f"Bearer {TENANT_KEYS['alpha']}"}
    agents = httpx.get(f"{sdk_mesh.gateway_url}/v1/agents", headers=headers, timeout=10).json()["agents"]
    mix = next(a for a in agents if a["name"] == "sdk-mix")
    assert mix["version"] == "1" and mix["input_schema"]["properties"]["width"]["maximum"] == 16
    assert "version" not in next(a for a in agents if a["name"] == "pipeline")
    bad = httpx.post(
        f"{sdk_mesh.gateway_url}/v1/tasks",
        headers=headers,
        json={"agent": "sdk-mix", "input": {"width": 99}},
        timeout=10,
    )
    assert bad.status_code == 400, bad.text
    violations = bad.json()["error"]["details"]["field_violations"]
    assert violations == [{"field": "input.width", "description": "Input should be less than or equal to 16"}]


@pytest.mark.parametrize(
    ("agent", "reason", "says"),
    [
        ("sdk-raises", "AGENT_ERROR", "KeyError: 'no such thing'"),
        ("sdk-not-json", "RESULT_NOT_JSON", "not JSON serializable"),
        ("sdk-foreign", "FOREIGN_AWAIT", "not an agentmesh ctx awaitable"),
        ("sdk-clock", "NONDETERMINISTIC_CALL", "use ctx.now()"),
    ],
)
def test_bad_agent_code_fails_its_task_clearly(sdk_mesh: Mesh, agent: str, reason: str, says: str) -> None:
    async def go() -> None:
        async with client_for(sdk_mesh) as client:
            done = await client.wait((await client.submit(agent, {})).id)
            assert done.state == pb.TASK_STATE_FAILED
            assert done.error.reason == reason and says in done.error.message, done.error
            if reason == "AGENT_ERROR":
                assert "sdk_agents.py" in json.loads(done.error.details_json)["traceback"]

    run(go())


def test_agent_code_that_blocks_fails_and_the_planner_serves_others_meanwhile(sdk_mesh: Mesh) -> None:
    async def go() -> None:
        async with client_for(sdk_mesh) as client:
            blocked = await client.submit("sdk-blocks", {"seconds": 10})
            await asyncio.sleep(0.3)
            started = time.monotonic()
            other = await client.wait((await client.submit("sdk-seq", {"n": 5})).id)
            assert other.state == pb.TASK_STATE_SUCCEEDED and time.monotonic() - started < 2.5
            done = await client.wait(blocked.id)
            assert done.state == pb.TASK_STATE_FAILED and done.error.reason == "AGENT_BLOCKED", done.error
            stack = json.loads(done.error.details_json)["traceback"]
            assert "sdk_agents.py" in stack and "in blocks" in stack, stack

    run(go())


def test_a_code_change_under_an_in_flight_task_holds_it_unless_patched(own_mesh) -> None:  # type: ignore[no-untyped-def]
    """A changed agent under a parked task: the task is held (NONDETERMINISM, its journal kept) for
    an operator to resume it on the old code, reset it, or fail it; behind ctx.patched it goes on."""
    mesh = own_mesh(extra_env=SDK_ENV)
    planner = mesh.children["planner"]

    def redeploy(change: str) -> None:
        planner.env["SDK_TEST_CHANGE"] = change
        mesh.kill9("planner")
        mesh.restart("planner")

    async def park(client) -> str:  # type: ignore[no-untyped-def]
        task = await client.submit("sdk-changing", {})
        async for event in client.watch(task.id):
            if event.kind == "input.requested":
                return task.id
        raise AssertionError("the task ended before it asked for input")

    async def held(client, task_id: str) -> pb.Task:  # type: ignore[no-untyped-def]
        await client.send_input(task_id, {"go": 1})
        for _ in range(400):
            task = await client.get(task_id)
            if task.held:
                return task
            await asyncio.sleep(0.05)
        raise AssertionError(f"task {task_id} was not held: {task}")

    async def go() -> None:
        async with client_for(mesh) as client:
            failing, resumed, reset, guarded = [await park(client) for _ in range(4)]
            redeploy("unguarded")
            task = await held(client, failing)
            assert task.state == pb.TASK_STATE_WAITING and task.error.reason == "NONDETERMINISM", task
            details = json.loads(task.error.details_json)
            assert (
                details["agent"] == "sdk-changing" and details["version"] == "1" and details["position"] == 0
            )
            assert details["journal_fingerprint"].startswith("exec:echo:")
            assert details["code_fingerprint"].startswith("exec:python:")
            assert details["call_site"].startswith(AGENTS + ":")
            assert len((await client.journal(failing)).decisions) == 2  # nothing run again, nothing lost
            done = await client.resolve(failing, "fail")
            assert done.state == pb.TASK_STATE_FAILED and done.error.reason == "NONDETERMINISM"
            with pytest.raises(AgentMeshError) as refused:
                await client.resolve(failing, "resume")
            assert refused.value.reason == "NOT_HELD"
            # Reset to the start: the new code runs it from its first step, on the same input.
            await held(client, reset)
            await client.resolve(reset, "reset", to_decision=0)
            done = await client.wait(reset)
            assert json.loads(done.result_json) == {"out": "new"}, done
            # Resume on the old code, deployed again: it goes on as if nothing had happened.
            await held(client, resumed)
            redeploy("")
            await client.resolve(resumed, "resume")
            done = await client.wait(resumed)
            assert done.state == pb.TASK_STATE_SUCCEEDED and not done.held, done
            assert json.loads(done.result_json) == {"out": {"step": "old"}}
            redeploy("patched")
            await client.send_input(guarded, {})
            done = await client.wait(guarded)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            assert json.loads(done.result_json) == {"out": {"step": "old"}}
            fresh = await client.submit("sdk-changing", {})
            await client.send_input(fresh.id, {})
            done = await client.wait(fresh.id)
            assert json.loads(done.result_json) == {"out": "new"}, done

    run(go())


def test_a_lost_race_branch_that_spawned_a_child_cancels_the_child(sdk_mesh: Mesh) -> None:
    async def go() -> None:
        async with client_for(sdk_mesh) as client:
            task = await client.submit("sdk-race-spawn", {})
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            assert json.loads(done.result_json)["winner"] == {"fast": True}
            children = [t for t in (await client.list(limit=50)).tasks if t.parent_id == task.id]
            assert [c.agent for c in children] == ["sdk-sleeper"]
            child = await client.wait(children[0].id)
            assert child.state == pb.TASK_STATE_CANCELLED, child
        for _ in range(100):  # the child's sleep is killed with it
            if not sdk_mesh.action_processes():
                break
            await asyncio.sleep(0.05)
        assert not sdk_mesh.action_processes()

    run(go())


@pytest.mark.parametrize("victim", ["coordinator", "worker"])
def test_kill_9_at_random_points_ends_each_run_once_with_the_uncrashed_result(
    own_mesh, shared_dir: Path, victim: str
) -> None:  # type: ignore[no-untyped-def]
    """`worker`: the agents are served by an agent worker process (`agentmesh worker`), not by the
    mesh's planner, and that worker is the one killed and started again."""
    if victim == "coordinator":
        mesh = own_mesh(extra_env={**SDK_ENV, "AGENTMESH_SHARED_DIR": str(shared_dir)})
    else:
        mesh = own_mesh(extra_env={"AGENTMESH_SHARED_DIR": str(shared_dir)})
        mesh.add_worker("worker", AGENTS, AGENTMESH_STEP_TIMEOUT_S="3")
        run(wait_registered(mesh, "worker", "sdk-mix"))
    rng = random.Random(7)
    kills = 20

    def spec(mark: str) -> dict:
        return {"width": 4, "tail": 20, "ask": True, "mark": mark}

    async def start(mark: str) -> str:
        async with client_for(mesh) as client:
            task = await client.submit("sdk-mix", spec(mark))
            await client.send_input(task.id, {"go": True})  # queued for the agent's ctx.input
            return task.id

    async def wait(ids: list[str]) -> list[pb.Task]:
        async with client_for(mesh) as client:
            return list(await asyncio.gather(*(client.wait(i) for i in ids)))

    reference_id = run(start("ref"))
    (reference,) = run(wait([reference_id]))
    assert reference.state == pb.TASK_STATE_SUCCEEDED, reference.error
    db = mesh.data_dir / "agentmesh.db"
    reference_journal = fingerprints(db, reference_id)
    assert sum(len(d) for d in reference_journal) >= 30

    crashed: list[str] = []
    # Python steps whose result was in the store at a kill -> how often they had run by then.
    recorded: dict[str, int] = {}
    for k in range(kills):
        crashed.append(run(start(f"k{k}")))
        time.sleep(rng.uniform(0.02, 0.6))
        mesh.kill9(victim)
        so_far = mark_counts(shared_dir)
        for name in recorded_python_steps(db, {t: f"k{i}" for i, t in enumerate(crashed)}):
            recorded.setdefault(name, so_far[name])
        mesh.restart(victim)
    finals = run(wait(crashed))

    expected = json.loads(reference.result_json)
    for task in finals:
        assert task.state == pb.TASK_STATE_SUCCEEDED, (task.id, task.error)
        result = json.loads(task.result_json)
        assert result.pop("rand") == round(random.Random(task.id).random(), 9)
        assert result == {k: v for k, v in expected.items() if k != "rand"}
        assert fingerprints(db, task.id) == reference_journal
    with sqlite3.connect(db) as conn:
        for task_id in crashed:
            states = [
                json.loads(d)["state"]
                for (d,) in conn.execute(
                    "SELECT data FROM events WHERE task_id = ? AND kind = 'state'", (task_id,)
                )
            ]
            assert [s for s in states if s in ("SUCCEEDED", "FAILED", "CANCELLED")] == ["SUCCEEDED"]
    runs = mark_counts(shared_dir)
    assert len(runs) == 4 * (kills + 1)
    # No recorded action ran again. (A python step cut off by a coordinator crash before its result
    # was recorded may run again: the executor declares python safe to repeat in its sandbox, and
    # only this test's shared dir sees the first run.)
    again = {name: (then, runs[name]) for name, then in recorded.items() if runs[name] != then}
    assert recorded and not again, again
    if victim == "worker":  # the executor and the coordinator never stopped: nothing ran twice
        assert set(runs.values()) == {1}, {name: n for name, n in runs.items() if n != 1}


async def wait_registered(mesh: Mesh, worker_id: str, agent: str, version: str = "") -> None:
    async with client_for(mesh) as client:
        await registered(client, worker_id, agent, version)


def mark_counts(shared_dir: Path) -> Counter[str]:
    """How many times each python step has run (one line per run in its mark file)."""
    return Counter(p.name for p in shared_dir.iterdir() for _ in p.read_text().splitlines())


def recorded_python_steps(db: Path, marks: dict[str, str]) -> set[str]:
    """Mark names (`<mark>-sq<i>`) of the python steps whose results the store holds now."""
    found = set()
    with sqlite3.connect(db) as conn:
        for task_id, body in conn.execute("SELECT task_id, body FROM results"):
            result = pb.ActionResult.FromString(body)
            kind, _, position = result.key.partition("#")
            if task_id in marks and kind == "exec" and 1 <= int(position) <= 4:
                found.add(f"{marks[task_id]}-sq{int(position) - 1}")
    return found


@pytest.mark.parametrize("wait", ["exec", "input"])
def test_cancel_raises_cancelled_inside_and_shielded_cleanup_runs_and_is_paid_for(
    sdk_mesh: Mesh, wait: str
) -> None:
    async def go() -> None:
        async with client_for(sdk_mesh) as client:
            task = await client.submit("sdk-cleanup", {"wait": wait})
            async for event in client.watch(task.id):
                if event.kind in ("action.started", "input.requested"):
                    break
            if wait == "exec":
                await wait_for_action_processes(sdk_mesh, "sleep", 1)
            await client.cancel(task.id)
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_CANCELLED, done.error
            events = [e async for e in client.watch(task.id)]
            cleaned = [json.loads(e.data_json) for e in events if e.kind == "agent.cleaned"]
            assert cleaned == [{"stdout": "cleaned", "cancelling": True}]
            assert done.cost.cpu_ms >= 250, done.cost  # the cleanup's busy 0.3 s is on the bill
            assert events[-1].kind == "state" and json.loads(events[-1].data_json)["state"] == "CANCELLED"
            assert not [c for c in sdk_mesh.action_processes().values() if c == "sleep"]

    run(go())


def test_an_unshielded_action_after_the_cancel_is_refused(sdk_mesh: Mesh) -> None:
    async def go() -> None:
        async with client_for(sdk_mesh) as client:
            task = await client.submit("sdk-cleanup", {"wait": "input", "unshielded": True})
            async for event in client.watch(task.id):
                if event.kind == "input.requested":
                    break
            await client.cancel(task.id)
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_CANCELLED
            events = [e async for e in client.watch(task.id)]
            assert not [e for e in events if e.kind == "agent.cleaned"]
            started = [json.loads(e.data_json)["key"] for e in events if e.kind == "action.started"]
            assert started == []  # neither the refused echo nor the cleanup ran

    run(go())


def test_export_and_replay_check_a_journal_against_the_code(sdk_mesh: Mesh, tmp_path: Path) -> None:
    async def finished() -> str:
        async with client_for(sdk_mesh) as client:
            task = await client.submit("sdk-mix", {"width": 2, "tail": 3, "ask": False})
            assert (await client.wait(task.id)).state == pb.TASK_STATE_SUCCEEDED
            return task.id

    task_id = run(finished())
    cli = [sys.executable, "-m", "agentmesh"]
    auth = ["--address", sdk_mesh.coordinator_addr, "--api-key", TENANT_KEYS["alpha"]]
    journals = tmp_path / "journals"
    journals.mkdir()
    exported = journals / f"{task_id}.json"
    done = subprocess.run(
        [*cli, "export", task_id, "--out", str(exported), *auth], capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(exported.read_text())["decisions"]) >= 8

    same = subprocess.run(
        [*cli, "replay", str(exported), "--agents", AGENTS, *auth], capture_output=True, timeout=60
    )
    assert same.returncode == 0 and b"ok" in same.stdout, same.stdout + same.stderr
    live = subprocess.run(
        [*cli, "replay", task_id, "--agents", AGENTS, *auth], capture_output=True, timeout=60
    )
    assert live.returncode == 0, live.stdout + live.stderr

    changed = tmp_path / "changed.py"
    changed.write_text(
        "from agentmesh.sdk import agent\n\n"
        "@agent(name='sdk-mix', version='1')\n"
        "async def mix(ctx, inp):\n"
        "    await ctx.exec('echo', step=1)\n"
        "    return {}\n"
    )
    differs = subprocess.run(
        [*cli, "replay", str(exported), "--agents", str(changed), "--json", *auth],
        capture_output=True,
        timeout=60,
    )
    assert differs.returncode == 1, differs.stdout + differs.stderr
    report = json.loads(differs.stdout)
    assert report["details"]["position"] == 0 and report["details"]["call_site"] == f"{changed}:5"

    from agentmesh.testing import replay_folder

    assert [r.ok for r in replay_folder(journals, AGENTS)] == [True]
    assert [r.ok for r in replay_folder(journals, str(changed))] == [False]
