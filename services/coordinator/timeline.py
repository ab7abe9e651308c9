"""A task's timeline, read back from its events: the wait in the queue, each decision (how long the
planner took), each call to a worker (its worker, its wait for one of the coordinator's slots, its
status and cost), and each wait on input, a timer or children."""

from __future__ import annotations

import json
from typing import Any

from protos.agentmesh.v1 import agent_service_pb2 as api
from protos.agentmesh.v1 import common_pb2 as pb

KINDS = ("state", "decision", "action.started", "action.finished")
MAX_EVENTS = 50_000  # past this many (tokens are not counted), the timeline stops early
WAIT_KINDS = frozenset({"await_input", "sleep", "spawn"})


def read(conn: Any, task_id: str) -> tuple[list[tuple[float, str, str]], bool]:
    marks = ", ".join("?" for _ in KINDS)
    rows = conn.execute(
        f"SELECT ts, kind, data FROM events WHERE task_id = ? AND kind IN ({marks}) ORDER BY seq LIMIT ?",
        (task_id, *KINDS, MAX_EVENTS + 1),
    ).fetchall()
    return [tuple(r) for r in rows[:MAX_EVENTS]], len(rows) > MAX_EVENTS  # type: ignore[misc]


def _cost(values: dict[str, Any] | None) -> pb.Cost:
    values = values or {}
    return pb.Cost(
        **{
            k: values[k]
            for k in ("tokens_in", "tokens_out", "gpu_ms", "cpu_ms", "wall_ms", "usd")
            if k in values
        }
    )


def build(task: pb.Task, events: list[tuple[float, str, str]], truncated: bool = False) -> api.TaskTimeline:
    timeline = api.TaskTimeline(task=task, truncated=truncated)
    spans = timeline.spans
    kinds: dict[str, str] = {}  # action id -> its kind, from the decision that asked for it
    started: dict[str, float] = {}
    running_at = None
    for ts, kind, data_json in events:
        data = json.loads(data_json)
        if kind == "state":
            if data.get("state") == "RUNNING" and running_at is None:
                running_at = ts
                spans.add(kind="queued", name="queued", start=task.created_at, end=ts, status="RUNNING")
        elif kind == "decision":
            for action in data.get("actions", []):
                kinds[action["id"]] = action.get("kind", "")
            took = float(data.get("decide_ms") or 0.0) / 1000
            spans.add(kind="decision", name=f"decision {data['seq']}", start=ts - took, end=ts,
                      status=data.get("final") or "")  # fmt: skip
        elif kind == "action.started":
            started.setdefault(data["action_id"], ts)
        else:
            action_id = data["action_id"]
            action_kind = kinds.get(action_id, "")
            tries = data.get("tries") or []
            for attempt in tries:
                spans.add(
                    kind="attempt",
                    name=data.get("key") or action_id,
                    action_id=action_id,
                    action_kind=action_kind,
                    attempt=attempt["attempt"],
                    start=attempt["start"],
                    end=attempt["end"],
                    worker=attempt.get("worker", ""),
                    queued_ms=attempt.get("queued_ms", 0.0),
                    status=attempt.get("status", ""),
                    reason=attempt.get("reason") or "",
                    cost=_cost(attempt.get("cost")),
                )
            if not tries:  # a wait, or an action stopped before any worker answered
                spans.add(
                    kind="wait" if action_kind in WAIT_KINDS else "attempt",
                    name=data.get("key") or action_id,
                    action_id=action_id,
                    action_kind=action_kind,
                    attempt=data.get("attempts") or 0,
                    start=started.get(action_id, ts),
                    end=ts,
                    status=data.get("status", ""),
                    reason=data.get("error") or "",
                )
    return timeline
