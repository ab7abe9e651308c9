"""Drive an SDK agent in memory the way the coordinator does (a wave of actions per decision), with
made-up action outcomes: for unit tests of the SDK's stepping and replay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agentmesh.sdk.commands import Command
from agentmesh.sdk.definition import AgentDefinition
from agentmesh.sdk.results import Outcome, Status, Usage
from agentmesh.sdk.run import Final, Recorded, Run, Step, replay


def ok(output: Any = None, **fields: Any) -> Outcome:
    return Outcome(Status.OK, output=output, cost=Usage(cpu_ms=1.0, usd=0.001), **fields)


def failed(reason: str = "EXIT_STATUS", **fields: Any) -> Outcome:
    return Outcome(Status.FAILED, reason=reason, message="it failed", **fields)


def settle(step: Step, answer: Callable[[Command], Outcome]) -> list[Outcome]:
    """The wave's outcomes; with first_success, the ones after the first success are SKIPPED."""
    outcomes: list[Outcome] = []
    won = False
    for command in step.commands:
        if won:
            outcomes.append(Outcome(Status.SKIPPED, reason="SKIPPED"))
            continue
        outcome = answer(command)
        won = step.first_success and outcome.ok
        outcomes.append(outcome)
    return outcomes


def drive(
    definition: AgentDefinition,
    answer: Callable[[Command], Outcome],
    inp: Any = None,
    *,
    task_id: str = "task-1",
    replay_every_step: bool = False,
    max_steps: int = 10_000,
) -> tuple[Final, list[Recorded], list[Step]]:
    """Run to the end; with `replay_every_step`, each decision is taken by a fresh run replayed from
    the journal (a cold worker every time)."""
    run = Run(definition, task_id, inp, strict=True)
    journal: list[Recorded] = []
    steps: list[Step] = []
    previous: list[Outcome] = []
    for seq in range(1, max_steps + 1):
        now = 1_000.0 + seq
        if replay_every_step and journal:
            run, stopped = replay(definition, task_id, inp, journal, strict=True)
            if stopped is not None:
                return stopped.final, journal, steps  # type: ignore[return-value]
        step = run.advance(seq, now, previous)
        steps.append(step)
        if step.final is not None:
            return step.final, journal, steps
        previous = settle(step, answer)
        journal.append(
            Recorded(
                seq,
                now,
                tuple(step.memo["patches"]),
                tuple(c.fingerprint for c in step.commands),
                tuple(previous),
            )
        )
    raise AssertionError("the agent did not finish")
