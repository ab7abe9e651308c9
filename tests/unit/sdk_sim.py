"""Drive an SDK agent in memory the way the coordinator does, with made-up action outcomes: for
unit tests of the SDK's stepping and replay. The agent is asked again as actions settle; by
default every open action settles before the next decision (`batch`: at most that many, oldest
first, so later actions start while earlier ones still run)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agentmesh.sdk.commands import Command
from agentmesh.sdk.definition import AgentDefinition
from agentmesh.sdk.results import Outcome, Status, Usage
from agentmesh.sdk.run import Delivery, Final, Recorded, Run, Step, replay


def ok(output: Any = None, **fields: Any) -> Outcome:
    return Outcome(Status.OK, output=output, cost=Usage(cpu_ms=1.0, usd=0.001), **fields)


def failed(reason: str = "EXIT_STATUS", **fields: Any) -> Outcome:
    return Outcome(Status.FAILED, reason=reason, message="it failed", **fields)


CANCELLED = Outcome(Status.CANCELLED, reason="CANCELLED", message="the agent gave it up")


def answers(seq: int, *outcomes: Outcome) -> list[Delivery]:
    """Results for decision `seq`'s actions, in their order."""
    return [(seq, index, outcome) for index, outcome in enumerate(outcomes)]


def record(seq: int, now: float, step: Step, delivered: list[Delivery], cancelling: bool = False) -> Recorded:
    return Recorded(
        seq,
        now,
        tuple(step.memo["patches"]),
        tuple(c.fingerprint for c in step.commands),
        tuple(delivered),
        cancelling=cancelling,
        tools=step.memo.get("tools"),
    )


def drive(
    definition: AgentDefinition,
    answer: Callable[[Command], Outcome],
    inp: Any = None,
    *,
    task_id: str = "task-1",
    replay_every_step: bool = False,
    max_steps: int = 10_000,
    batch: int = 0,
    tools: dict[str, Any] | None = None,
) -> tuple[Final, list[Recorded], list[Step]]:
    """Run to the end; with `replay_every_step`, each decision is taken by a fresh run replayed from
    the journal (a cold worker every time)."""
    run = Run(definition, task_id, inp, strict=True)
    journal: list[Recorded] = []
    steps: list[Step] = []
    delivered: list[Delivery] = []
    running: list[tuple[int, int, Command]] = []
    seq = 1
    for _ in range(max_steps):
        now = 1_000.0 + len(steps) + 1
        if replay_every_step and journal:
            run, stopped = replay(definition, task_id, inp, journal, strict=True, tools=tools)
            if stopped is not None:
                return stopped.final, journal, steps  # type: ignore[return-value]
        step = run.advance(seq, now, delivered, tools=tools)
        steps.append(step)
        if step.final is not None:
            return step.final, journal, steps
        if step.idle:  # not recorded: the next decision, under the same seq, gets these again
            kept = delivered
        else:
            journal.append(record(seq, now, step, delivered))
            seq, kept = seq + 1, []
        running += [(seq - 1, index, command) for index, command in enumerate(step.commands)]
        given_up = set(step.cancel)
        settling, running = (running[:batch], running[batch:]) if batch else (running, [])
        delivered = kept + [
            (s, i, CANCELLED if (s, i) in given_up else answer(command)) for s, i, command in settling
        ]
    raise AssertionError("the agent did not finish")
