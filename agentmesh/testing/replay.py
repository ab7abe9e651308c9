"""Replay a task's recorded journal (an `agentmesh export` file, or one fetched live) against the
agent code as it is now, in this process: what a deploy would do to the tasks in flight."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from agentmesh.sdk import strict
from agentmesh.sdk.definition import AgentDefinition
from agentmesh.sdk.loader import load_agents
from agentmesh.sdk.run import Recorded, Run, replay
from protos.agentmesh.v1 import agent_service_pb2 as api
from protos.agentmesh.v1 import common_pb2 as pb
from services.planner.durable import journal_of
from services.runtime.errors import NONDETERMINISM


@dataclass(frozen=True)
class ReplayReport:
    task_id: str
    agent: str
    decisions: int
    ok: bool
    problem: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def load_journal(path: str | Path) -> api.TaskJournal:
    return json_format.ParseDict(json.loads(Path(path).read_text()), api.TaskJournal())


def dump_journal(journal: api.TaskJournal) -> str:
    return json.dumps(json_format.MessageToDict(journal), indent=1, sort_keys=True)


def replay_journal(
    journal: api.TaskJournal, agents: dict[str, Any], *, strict_mode: bool = True
) -> ReplayReport:
    """Replay every recorded decision; for a finished task, also check the code ends the same way."""
    task = journal.task
    definition = agents.get(task.agent)
    report = {"task_id": task.id, "agent": task.agent, "decisions": len(journal.decisions)}
    if not isinstance(definition, AgentDefinition):
        return ReplayReport(**report, ok=False, problem=f"no SDK agent {task.agent!r} in the code given")
    raw_input = json.loads(task.input_json) if task.input_json else None
    decisions = list(journal.decisions)
    final = decisions[-1].decision.final if decisions and decisions[-1].decision.HasField("final") else None
    records = journal_of(decisions)
    if strict_mode:
        strict.install()
    run, stopped = replay(
        definition, task.id, raw_input, records[:-1] if final else records, strict=strict_mode
    )
    if stopped is not None:
        assert stopped.final is not None
        return ReplayReport(**report, ok=False, problem=stopped.final.message, details=stopped.final.details)
    if final is None:
        return ReplayReport(**report, ok=True)
    return _check_end(run, records[-1], final, ReplayReport(**report, ok=True))


def _check_end(run: Run, last: Recorded, final: pb.Final, report: ReplayReport) -> ReplayReport:
    step = run.advance(last.seq, last.now, list(last.delivered), cancelling=last.cancelling)
    if step.final is None:
        return _differs(report, "the code goes on where the recorded task ended", {})
    if step.final.reason == NONDETERMINISM:
        return _differs(report, step.final.message, step.final.details)
    recorded_ok = final.state == pb.TASK_STATE_SUCCEEDED
    if recorded_ok != step.final.ok:
        return _differs(
            report, "the code ends otherwise than the recorded task", {"reason": step.final.reason}
        )
    if recorded_ok and json.loads(final.result_json) != json.loads(step.final.result_json):
        return _differs(
            report,
            "the code returns another result",
            {"recorded": json.loads(final.result_json), "code": json.loads(step.final.result_json)},
        )
    return report


def _differs(report: ReplayReport, problem: str, details: dict[str, Any]) -> ReplayReport:
    return ReplayReport(report.task_id, report.agent, report.decisions, False, problem, details)


def replay_folder(folder: str | Path, agents: str | dict[str, Any]) -> list[ReplayReport]:
    """Every `*.json` journal in `folder` against `agents` (a --agents spec, or loaded agents)."""
    strict.install()  # before the agents' modules are imported (they may bind time, random ...)
    loaded = load_agents(agents) if isinstance(agents, str) else agents
    return [replay_journal(load_journal(path), loaded) for path in sorted(Path(folder).glob("*.json"))]
