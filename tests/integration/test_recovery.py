"""kill -9 the coordinator mid-flight: every acknowledged task ends once, no recorded step reruns."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import time
from collections import Counter
from pathlib import Path

from protos.agentmesh.v1 import common_pb2 as pb
from services.runtime.wire import TERMINAL_STATES
from tests.conftest import client_for, run

TASKS = 50


def _spec(log: str, index: int) -> dict:
    def step(name: str, sleep: float, deps: list[str]) -> dict:
        return {
            "id": name,
            "tool": "shell",
            "depends_on": deps,
            "args": {"command": f'echo t{index}-{name} >> "$AGENTMESH_SHARED_DIR/{log}"; sleep {sleep}'},
        }

    return {"steps": [step("one", 0.2, []), step("two", 0.4, ["one"]), step("three", 0.2, ["two"])]}


def test_coordinator_crash_loses_nothing_and_reruns_nothing_recorded(
    own_mesh, tmp_path: Path, shared_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    mesh = own_mesh(extra_env={"AGENTMESH_SHARED_DIR": str(shared_dir)})
    log = shared_dir / "steps.log"
    log.touch()
    log.chmod(0o666)

    async def submit_all() -> list[str]:
        async with client_for(mesh) as client:
            tasks = await asyncio.gather(
                *[client.submit("pipeline", _spec(log.name, i)) for i in range(TASKS)]
            )
            return [t.id for t in tasks]

    ids = run(submit_all())
    time.sleep(0.5)
    mesh.kill9("coordinator")
    # What the store had recorded at the moment of the crash.
    snapshot = tmp_path / "snapshot.db"
    db = mesh.data_dir / "agentmesh.db"
    with sqlite3.connect(db) as source, sqlite3.connect(snapshot) as target:
        source.backup(target)
    with sqlite3.connect(snapshot) as conn:
        recorded = conn.execute("SELECT task_id, body FROM results").fetchall()
    recorded_steps = set()
    for task_id, body in recorded:
        result = pb.ActionResult.FromString(body)
        recorded_steps.add((task_id, result.key))
    mesh.restart("coordinator")

    async def wait_all() -> list[pb.Task]:
        async with client_for(mesh) as client:
            return list(await asyncio.gather(*[client.wait(i) for i in ids]))

    finals = run(wait_all())
    failed = [
        (t.id, t.state, t.error.reason, t.result_json[:600])
        for t in finals
        if t.state != pb.TASK_STATE_SUCCEEDED
    ]
    assert not failed, failed
    runs = Counter(log.read_text().split())
    by_id = {tid: i for i, tid in enumerate(ids)}
    for task_id, key in recorded_steps:
        assert runs[f"t{by_id[task_id]}-{key}"] == 1, f"recorded step {key} of task {task_id} ran again"
    for i in range(TASKS):
        for name in ("one", "two", "three"):
            assert runs[f"t{i}-{name}"] >= 1
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for task_id in ids:
            states = [
                json.loads(d)["state"]
                for (d,) in conn.execute(
                    "SELECT data FROM events WHERE task_id = ? AND kind = 'state'", (task_id,)
                )
            ]
            terminal = [s for s in states if s in ("SUCCEEDED", "FAILED", "CANCELLED")]
            assert terminal == ["SUCCEEDED"], (task_id, states)
    assert {t.state for t in finals} <= TERMINAL_STATES
    shutil.rmtree(tmp_path / "mesh0" / "data", ignore_errors=True)
