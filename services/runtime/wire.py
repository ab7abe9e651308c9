"""Conversions between protobuf messages and the JSON shapes of the public HTTP API and CLI."""

from __future__ import annotations

import json
from typing import Any

from protos.agentmesh.v1 import common_pb2

STATE_NAMES = {v: k.removeprefix("TASK_STATE_") for k, v in common_pb2.TaskState.items()}
STATE_VALUES = {name: value for value, name in STATE_NAMES.items() if value}
TERMINAL_STATES = frozenset(
    {common_pb2.TASK_STATE_SUCCEEDED, common_pb2.TASK_STATE_FAILED, common_pb2.TASK_STATE_CANCELLED}
)


def action_place(action_id: str) -> tuple[int, int]:
    """(decision seq, index in it) of an action id: TASK.SEQ.INDEX (TASK~rN.SEQ.INDEX after a reset)."""
    _, seq, index = action_id.rsplit(".", 2)
    return int(seq), int(index)


def loads_or_none(text: str) -> Any:
    return json.loads(text) if text else None


def cost_to_dict(cost: common_pb2.Cost) -> dict[str, Any]:
    return {
        "tokens_in": cost.tokens_in,
        "tokens_out": cost.tokens_out,
        "gpu_ms": round(cost.gpu_ms, 3),
        "cpu_ms": round(cost.cpu_ms, 3),
        "wall_ms": round(cost.wall_ms, 3),
        "usd": round(cost.usd, 8),
    }


def task_to_dict(task: common_pb2.Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "tenant": task.tenant,
        "agent": task.agent,
        "input": loads_or_none(task.input_json),
        "priority": task.priority,
        "budget": {"usd": task.budget.usd, "tokens": task.budget.tokens},
        "deadline": task.deadline or None,
        "labels": dict(task.labels),
        "idempotency_key": task.idempotency_key or None,
        "parent_id": task.parent_id or None,
        "state": STATE_NAMES[task.state],
        "result": loads_or_none(task.result_json),
        "error": (
            {
                "reason": task.error.reason,
                "message": task.error.message,
                "details": loads_or_none(task.error.details_json),
            }
            if task.error.reason
            else None
        ),
        "cost": cost_to_dict(task.cost),
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "finished_at": task.finished_at or None,
        "last_seq": task.last_seq,
        "cancel_requested": task.cancel_requested,
        "decisions": task.decisions,
        "input_prompt": task.input_prompt or None,
        "agent_version": task.agent_version or None,
        "held": task.held,
    }


def event_to_dict(event: common_pb2.Event) -> dict[str, Any]:
    return {
        "task_id": event.task_id,
        "seq": event.seq,
        "ts": event.ts,
        "kind": event.kind,
        "data": loads_or_none(event.data_json),
    }


def timeline_to_dict(timeline: Any) -> dict[str, Any]:
    """An agent_service_pb2.TaskTimeline as the HTTP API and `agentmesh timeline --json` show it."""
    spans = []
    for span in timeline.spans:
        entry: dict[str, Any] = {
            "kind": span.kind,
            "name": span.name,
            "start": span.start,
            "end": span.end,
            "duration_ms": round((span.end - span.start) * 1000, 3),
            "status": span.status,
        }
        if span.action_id:
            entry.update(action_id=span.action_id, action_kind=span.action_kind, attempt=span.attempt)
        if span.worker:
            entry.update(worker=span.worker, queued_ms=span.queued_ms)
        if span.reason:
            entry["reason"] = span.reason
        if span.HasField("cost"):
            entry["cost"] = cost_to_dict(span.cost)
        spans.append(entry)
    return {"task": task_to_dict(timeline.task), "spans": spans, "truncated": timeline.truncated}
