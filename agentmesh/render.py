"""Readable terminal output for the CLI (rich), and JSON for scripts."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from protos.agentmesh.v1 import common_pb2 as pb
from services.runtime.wire import STATE_NAMES, event_to_dict, task_to_dict, timeline_to_dict

STATE_STYLE = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "CANCELLED": "yellow",
    "WAITING": "cyan",
    "RUNNING": "blue",
    "QUEUED": "white",
}


def print_task(console: Console, task: pb.Task, as_json: bool = False) -> None:
    data = task_to_dict(task)
    if as_json:
        print(json.dumps(data))
        return
    state = data["state"]
    console.print(f"[bold]{task.id}[/bold]  {task.agent}  [{STATE_STYLE.get(state, 'white')}]{state}[/]")
    if data["error"]:
        console.print(f"  error: {data['error']['reason']}: {data['error']['message']}")
    if data["held"]:
        console.print(f"  [yellow]held[/yellow] for an operator: {data['input_prompt']}")
        console.print("  decide with: agentmesh resolve TASK_ID resume|reset|fail  (docs/agents.md)")
    elif data["input_prompt"]:
        console.print(f"  waiting for input: {data['input_prompt']}")
    cost = data["cost"]
    console.print(
        f"  cost: ${cost['usd']:.6f}  tokens {cost['tokens_in']}/{cost['tokens_out']}  "
        f"cpu {cost['cpu_ms']:.0f} ms"
    )
    if data["result"] is not None:
        console.print_json(json.dumps(data["result"]))


def print_tasks(console: Console, tasks: list[pb.Task], next_cursor: str, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps({"tasks": [task_to_dict(t) for t in tasks], "next_cursor": next_cursor or None}))
        return
    table = Table("id", "agent", "state", "cost $", "created")
    for task in tasks:
        state = STATE_NAMES[task.state]
        table.add_row(
            task.id,
            task.agent,
            f"[{STATE_STYLE.get(state, 'white')}]{state}[/]",
            f"{task.cost.usd:.6f}",
            _stamp(task.created_at),
        )
    console.print(table)
    if next_cursor:
        console.print(f"more: --cursor {next_cursor}")


def print_event(console: Console, event: pb.Event) -> None:
    data = json.loads(event.data_json) if event.data_json else {}
    console.print(
        f"[dim]{event.seq:>4} {_stamp(event.ts)}[/dim] [bold]{event.kind:<16}[/bold] "
        + _summary(event.kind, data)
    )


def _stamp(ts: float) -> str:
    import time

    return time.strftime("%H:%M:%S", time.localtime(ts))


def _summary(kind: str, data: dict[str, Any]) -> str:
    if kind == "state":
        extra = f" ({data.get('reason')}: {data.get('message')})" if data.get("reason") else ""
        return f"{data.get('state')}{extra}"
    if kind == "decision":
        if data.get("final"):
            return f"#{data.get('seq')} final: {data['final']}"
        return f"#{data.get('seq')} run " + ", ".join(
            a.get("key") or a.get("kind", "") for a in data.get("actions", [])
        )
    if kind == "action.started":
        return f"{data.get('key') or data.get('action_id')} ({data.get('kind')})"
    if kind == "action.finished":
        name = data.get("key") or data.get("action_id")
        return f"{name} {data.get('status')} (attempts {data.get('attempts')})"
    if kind == "action.output":
        return data.get("text", "").rstrip()[:200]
    if kind == "input.requested":
        return f"{data.get('prompt')}  -> agentmesh input <id> JSON"
    if kind == "cost":
        return f"task ${data.get('task', {}).get('usd', 0):.8f}"
    return data.get("message", json.dumps(data))


class LiveTaskView:
    """The `watch` view: one line per event, then the task's outcome."""

    def __init__(self, console: Console, task_id: str, as_json: bool = False) -> None:
        self.console = console
        self.task_id = task_id
        self.as_json = as_json

    def add(self, event: pb.Event) -> None:
        if self.as_json:
            print(json.dumps(event_to_dict(event)), flush=True)
        else:
            print_event(self.console, event)

    def finish(self, task: pb.Task) -> None:
        if not self.as_json:
            print_task(self.console, task)


def print_timeline(console: Console, timeline: Any, as_json: bool = False) -> None:
    """Each span of a task's timeline, with a bar showing where it fell in the task's life."""
    data = timeline_to_dict(timeline)
    if as_json:
        print(json.dumps(data))
        return
    spans = data["spans"]
    if not spans:
        console.print("no spans yet")
        return
    origin = min(s["start"] for s in spans)
    span_s = max(max(s["end"] for s in spans) - origin, 1e-6)
    width = 40
    table = Table(title=f"task {data['task']['id']} ({data['task']['state']}): {span_s:.3f}s")
    for column in ("at", "took", "kind", "name", "", "worker", "status", "cost"):
        table.add_column(column)
    for s in spans:
        left = int((s["start"] - origin) / span_s * width)
        bar = " " * left + "█" * max(1, int((s["end"] - s["start"]) / span_s * width))
        cost = s.get("cost", {})
        spent = f"${cost['usd']:.6f}" if cost.get("usd") else ""
        queued = f" (+{s['queued_ms']:.0f}ms queued)" if s.get("queued_ms", 0) >= 1 else ""
        table.add_row(
            f"{s['start'] - origin:8.3f}",
            f"{s['duration_ms'] / 1000:.3f}s",
            s["kind"],
            s["name"] + (f" #{s['attempt']}" if s.get("attempt", 0) > 1 else ""),
            bar[:width],
            s.get("worker", "") + queued,
            s["status"] + (f" {s['reason']}" if s.get("reason") else ""),
            spent,
        )
    console.print(table)
    if data["truncated"]:
        console.print("[yellow]the task has more events than a timeline reads: it stops early[/yellow]")
