"""SDK agents (`agentmesh.sdk.agent`) behind the planner's Decide protocol.

The planner keeps each task's agent coroutine in memory between decisions (`LiveRuns`, bounded
LRU), so a warm decision applies only the new results. Without a live run (a restart, an eviction,
a decision asked twice) it answers HISTORY_REQUIRED and the coordinator calls again with the task's
recorded decisions, from which the run is replayed. Agent code runs on a thread of its own with a
time limit, so code that blocks fails its task and the planner goes on serving others.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import threading
import time
import traceback
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from agentmesh.sdk.commands import Command, Join, Kind
from agentmesh.sdk.definition import AgentDefinition
from agentmesh.sdk.results import Outcome, Status, Usage
from agentmesh.sdk.run import Delivery, Final, Recorded, Run, Step, Unready, replay
from protos.agentmesh.v1 import common_pb2 as pb
from services.planner.registry import DecideContext, refuse_input
from services.runtime.errors import HISTORY_REQUIRED, FailedPrecondition, Unavailable
from services.runtime.wire import action_place

STATUS = {
    pb.ACTION_STATUS_OK: Status.OK,
    pb.ACTION_STATUS_FAILED: Status.FAILED,
    pb.ACTION_STATUS_CANCELLED: Status.CANCELLED,
    pb.ACTION_STATUS_TIMED_OUT: Status.TIMED_OUT,
    pb.ACTION_STATUS_SKIPPED: Status.SKIPPED,
}
JOIN = {Join.ALL: pb.JOIN_MODE_ALL, Join.ANY: pb.JOIN_MODE_ANY, Join.FAIL_FAST: pb.JOIN_MODE_FAIL_FAST}
AMBIGUOUS = {
    None: pb.AMBIGUOUS_POLICY_UNSPECIFIED,
    "rerun": pb.AMBIGUOUS_POLICY_RERUN,
    "fail": pb.AMBIGUOUS_POLICY_FAIL,
}


@dataclass(frozen=True)
class DurableSettings:
    strict: bool = False
    live_runs: int = 10_000  # 0: replay every decision (no live state kept)
    step_timeout_s: float = 5.0
    threads: int = 16  # agent code runs on these, one decision at a time each


class LiveRuns:
    """task id -> its live run, least recently used dropped first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._runs: OrderedDict[str, tuple[Run, tuple[Any, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def take(self, task_id: str, memo: Any) -> Run | None:
        """Remove and return the task's run if it stands where the coordinator's checkpoint does
        (the memo it last answered is the one recorded): while one call steps it, another finds
        none. A run that answered a decision the coordinator did not record (another worker's
        answer was recorded instead, or none) is stale: None, and the journal is replayed."""
        with self._lock:
            entry = self._runs.pop(task_id, None)
            if entry is None or entry[1] != _answer_of(memo):
                self.misses += 1
                return None
            self.hits += 1
            return entry[0]

    def put(self, task_id: str, run: Run, memo: Any) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._runs[task_id] = (run, _answer_of(memo))
            while len(self._runs) > self.capacity:
                self._runs.popitem(last=False)

    def __len__(self) -> int:
        return len(self._runs)


def _answer_of(memo: Any) -> tuple[Any, Any]:
    """What tells one answer to a decision from another: the coordinator's clock at the call (a
    new value per call) and the positions handed out by then. Kept instead of the whole memo: a
    few bytes per parked run, not a dict."""
    return (memo.get("now"), memo.get("issued")) if isinstance(memo, dict) else (None, None)


# ------------------------------------------------------------------------- protobuf <-> SDK data


def outcome_of(result: pb.ActionResult) -> Outcome:
    c = result.cost
    return Outcome(
        status=STATUS.get(result.status, Status.FAILED),
        output=json.loads(result.output_json) if result.output_json else None,
        exit_code=result.exit_code,
        stdout=result.stdout,
        stderr=result.stderr,
        reason=result.error.reason,
        message=result.error.message,
        cost=Usage(c.tokens_in, c.tokens_out, c.gpu_ms, c.cpu_ms, c.wall_ms, c.usd),
        artifacts=dict(result.artifacts),
        attempts=result.attempts,
    )


def action_of(command: Command) -> pb.Action:
    body, options = command.body, command.options
    action = pb.Action(
        key=command.key or f"{command.kind}#{command.position}",
        timeout_s=options.timeout_s,
        share_identical=options.share_identical,
        fingerprint=command.fingerprint,
    )
    if options.retry is not None:
        r = options.retry
        action.retry.CopyFrom(
            pb.RetryPolicy(
                attempts=r.attempts,
                backoff_s=r.backoff_s,
                max_backoff_s=r.max_backoff_s,
                retry_on=list(r.retry_on),
                on_ambiguous=AMBIGUOUS[r.on_ambiguous],
            )
        )
    kind = command.kind
    if kind is Kind.EXEC:
        action.exec.CopyFrom(
            pb.ExecAction(
                tool=command.target,
                args_json=json.dumps(body["args"]),
                files=body["files"],
                network=body["network"],
                output_files=body["output_files"],
                isolation=body["isolation"],
                limits=pb.ResourceLimits(**body["limits"]),
            )
        )
    elif kind is Kind.INFER:
        fields = {k: v for k, v in body.items() if k != "messages"}
        action.infer.CopyFrom(
            pb.InferAction(**fields, messages=[pb.ChatMessage(**m) for m in body["messages"]])
        )
    elif kind is Kind.EMBED:
        action.embed.CopyFrom(pb.EmbedAction(model=body["model"], texts=body["texts"]))
    elif kind is Kind.SPAWN:
        children = [
            pb.ChildSpec(
                agent=c["agent"],
                input_json=json.dumps(c["input"]) if c["input"] is not None else "",
                priority=c["priority"],
                labels=c["labels"],
            )
            for c in body["children"]
        ]
        action.spawn.CopyFrom(pb.SpawnAction(children=children, join=JOIN[Join(body["join"])]))
    elif kind is Kind.INPUT:
        action.await_input.CopyFrom(pb.AwaitInputAction(prompt=body["prompt"], timeout_s=body["timeout_s"]))
    else:
        action.sleep.CopyFrom(pb.SleepAction(seconds=body["seconds"]))
    return action


def decision_of(step: Step) -> pb.Decision:
    decision = pb.Decision(
        memo_json=json.dumps(step.memo),
        actions=[action_of(c) for c in step.commands],
        handles_cancel=True,
        # An SDK agent is asked again as each of its actions settles: work it can start only after
        # one result starts then, not when the rest of the wave is done.
        on_each_settle=True,
        nothing_new=step.idle,
        cancel_actions=[f"{seq}.{index}" for seq, index in step.cancel],
        events=[pb.AgentEvent(kind=k, data_json=json.dumps(d)) for k, d in step.events],
    )
    if step.final is not None:
        decision.final.CopyFrom(final_of(step.final))
    return decision


def final_of(final: Final) -> pb.Final:
    if final.ok:
        return pb.Final(state=pb.TASK_STATE_SUCCEEDED, result_json=final.result_json)
    error = pb.TaskError(reason=final.reason, message=final.message, details_json=json.dumps(final.details))
    return pb.Final(state=pb.TASK_STATE_FAILED, error=error, result_json=final.result_json)


def tools_of(specs: dict[str, pb.ToolSpec]) -> dict[str, Any] | None:
    """The executor's tools as `ctx.tools()` reads them (and the memo records them); None when the
    coordinator sent none."""
    if not specs:
        return None
    return _tools_of(tuple(spec.SerializeToString(deterministic=True) for spec in specs.values()))


@functools.lru_cache(maxsize=8)
def _tools_of(serialized: tuple[bytes, ...]) -> dict[str, Any]:
    # The same few catalogues come with every decision: parsed once each.
    tools = {}
    for data in serialized:
        spec = pb.ToolSpec.FromString(data)
        tools[spec.name] = {
            "description": spec.description,
            "args_schema": json.loads(spec.args_schema_json or "{}"),
            "repeat": pb.RepeatSafety.Name(spec.repeat),
        }
    return tools


def delivery_of(result: pb.ActionResult) -> Delivery:
    seq, index = action_place(result.action_id)
    return seq, index, outcome_of(result)


def journal_of(history: list[pb.RecordedDecision]) -> list[Recorded]:
    """The recorded decisions as replay reads them, each with the results it was taken on: those
    it names (`answered`, once a decision has asked to hear of each settle), or else all of the
    previous decision's, in its actions' order (the coordinator then settles a whole group first)."""
    results = {r.action_id: r for record in history for r in record.results}
    journal = []
    previous: pb.Decision | None = None
    eager = False  # from the first on_each_settle decision on, every decision names its results
    for record in history:
        decision = record.decision  # one wrapper per record: each access makes a new one
        eager = eager or (previous is not None and previous.on_each_settle)
        if previous is None:
            answered: list[str] = []
        elif eager:
            answered = list(decision.answered)
        else:
            answered = [a.id for a in previous.actions]
        try:
            delivered = tuple(delivery_of(results[i]) for i in answered)
        except KeyError as missing:
            raise FailedPrecondition(
                f"the journal has no result for {missing.args[0]}", reason="JOURNAL_INCOMPLETE"
            ) from None
        memo_json = decision.memo_json
        memo = json.loads(memo_json) if memo_json else {}
        journal.append(
            Recorded(
                seq=record.seq,
                now=float(memo.get("now", 0.0)),
                patches=tuple(memo.get("patches", ())),
                fingerprints=tuple(a.fingerprint for a in decision.actions),
                delivered=delivered,
                cancelling=bool(memo.get("cancelling")),
                tools=memo.get("tools"),
            )
        )
        previous = decision
    return journal


# ------------------------------------------------------------------------- the agent


class DurableAgent:
    """One SDK agent as the planner's `Agent`: validate and (async) decide."""

    def __init__(
        self, definition: AgentDefinition, runs: LiveRuns, pool: ThreadPoolExecutor, settings: DurableSettings
    ) -> None:
        self.definition = definition
        self.name = definition.name
        self.description = definition.description
        self.version = definition.version
        self.runs, self.pool, self.settings = runs, pool, settings

    def input_schema(self) -> dict[str, Any] | None:
        return self.definition.input.json_schema()

    def validate(self, input: Any) -> None:  # noqa: A002
        # Named as in the submitted body, where the agent's input is the field `input`.
        violations = self.definition.input.violations(input)
        refuse_input(
            f"input for {self.name}",
            [(f"input.{f}" if f != "input" else f, d) for f, d in violations],
        )

    async def decide(self, ctx: DecideContext) -> pb.Decision:
        memo = ctx.memo if isinstance(ctx.memo, dict) else {}
        # The coordinator's pin wins: an operator may resume a held task on another version.
        started_on = ctx.agent_version or memo.get("version") or None
        if started_on is not None and started_on != self.version:
            # Pinned: a task is only ever decided by the version it started on.
            raise Unavailable(
                f"task {ctx.task_id} runs {self.name} v{started_on}; this planner serves v{self.version}",
                reason="AGENT_VERSION_UNAVAILABLE",
            )
        run = self.runs.take(ctx.task_id, memo)
        if run is not None and (run.decided != ctx.decision_seq - 1 or run.definition is not self.definition):
            run = None  # stale (a decision asked again after a lost answer): rebuild from the journal
        if run is None and ctx.decision_seq > 1 and ctx.history is None:
            raise FailedPrecondition(
                f"no live state for task {ctx.task_id}: send its history", reason=HISTORY_REQUIRED
            )
        holder: dict[str, float] = {}
        future = asyncio.get_running_loop().run_in_executor(self.pool, self._step, ctx, run, holder)
        limit = wait = self.settings.step_timeout_s + 0.01 * len(ctx.history or ())
        while True:
            try:
                run, step = await asyncio.wait_for(asyncio.shield(future), wait)
                break
            except Unready as exc:
                # Retryable: the coordinator asks again, with what it could read by then.
                raise Unavailable(f"{self.name}: {exc}") from None
            except TimeoutError:
                # The limit counts from when the step started on a thread, not while it queued for
                # one: tasks waiting behind blocked ones are not failed for them.
                began = holder.get("began")
                wait = limit if began is None else began + limit - time.monotonic()
                if wait <= 0:
                    final = self._blocked(int(holder["thread"]), limit)
                    return decision_of(Step([], [], memo, final=final))
        decision = decision_of(step)
        if step.final is None:
            # Kept with what identifies the answer; an idle decision is not recorded, so the next
            # call brings this call's memo again.
            self.runs.put(ctx.task_id, run, memo if step.idle else step.memo)
        return decision

    def _step(self, ctx: DecideContext, run: Run | None, holder: dict[str, float]) -> tuple[Run, Step]:
        holder["thread"] = threading.get_ident()
        holder["began"] = time.monotonic()
        tools = tools_of(ctx.tools)
        if run is None:
            journal = journal_of(ctx.history or [])
            run, stopped = replay(
                self.definition, ctx.task_id, ctx.input, journal, strict=self.settings.strict, tools=tools
            )
            if stopped is not None:
                return run, stopped
        delivered = [delivery_of(r) for r in ctx.results]
        return run, run.advance(
            ctx.decision_seq, ctx.now or time.time(), delivered, cancelling=ctx.cancelling, tools=tools
        )

    def _blocked(self, thread: int, limit: float) -> Final:
        frame = sys._current_frames().get(thread)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
        return Final(
            ok=False,
            reason="AGENT_BLOCKED",
            message=f"{self.name} v{self.version} ran {limit:.1f}s without yielding: agent code must not "
            "block (await ctx.* instead of sleeping, computing for long, or doing I/O)",
            details={"traceback": stack},
        )


def durable_agents(
    definitions: dict[str, AgentDefinition], settings: DurableSettings
) -> dict[str, DurableAgent]:
    runs = LiveRuns(settings.live_runs)
    pool = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="agent")
    return {name: DurableAgent(d, runs, pool, settings) for name, d in definitions.items()}
