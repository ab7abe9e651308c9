"""One task's agent coroutine, driven decision by decision, and its replay from the journal.

A decision is a step: the results handed in (those that settled since the last decision, in the
order they settled) are applied one at a time, each followed by running the agent until nothing
more can run; whatever it asked for meanwhile is the next decision, and the actions it has not yet
heard of stay open beside it. The journal keeps which results each decision was taken on, in
order. Replay takes the same steps from the recorded decisions and checks, at each call, that the
code asks for what the journal holds at that position: when it does not, the run stops with
NONDETERMINISM instead of running or skipping anything.
"""

from __future__ import annotations

import json
import re
import traceback
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

from agentmesh.sdk import strict as _strict
from agentmesh.sdk.commands import Command, Kind, Options
from agentmesh.sdk.context import Action, Context
from agentmesh.sdk.definition import AgentDefinition
from agentmesh.sdk.loop import Loop, Task
from agentmesh.sdk.results import AgentError, Cancelled, Outcome, Usage

MEMO_FORMAT = 1
EVENT_KIND = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")
MAX_TRACEBACK = 16_000


@dataclass(frozen=True)
class Final:
    """How the task ends: a JSON result, or a failure with a reason."""

    ok: bool
    result_json: str = ""
    reason: str = ""
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)


# A result handed to a decision: which action (the decision that asked for it and its index there)
# and its outcome.
Delivery = tuple[int, int, Outcome]


@dataclass(frozen=True)
class Recorded:
    """One past decision as the journal holds it: for replay."""

    seq: int
    now: float
    patches: tuple[str, ...]
    fingerprints: tuple[str, ...]  # its actions, in order
    delivered: tuple[Delivery, ...]  # the results it was taken on, in the order they were applied
    cancelling: bool = False  # taken while the task was being cancelled
    tools: dict[str, Any] | None = None  # the executor's tools, where the decision read them


@dataclass
class Step:
    """One decision: the new actions, progress events, the memo to checkpoint, or the end."""

    commands: list[Command]
    events: list[tuple[str, Any]]
    memo: dict[str, Any]
    final: Final | None = None
    # Open actions (decision seq, index) the agent gave up (the losers of a `ctx.first`): to cancel.
    cancel: list[tuple[int, int]] = field(default_factory=list)
    # Nothing came of the results handed in (no action, event, cancel, patch, clock read, or end):
    # the decision need not be recorded. Its seq is not used up; the next decision with that seq
    # is handed these results again (a live run skips them) together with the newer ones.
    idle: bool = False


class ProtocolError(Exception):
    """The caller handed in results that do not match the decision they answer."""


class Unready(Exception):
    """The agent asked for something the caller did not hand in (the executor's tools, when the
    coordinator could not read them): the decision cannot be taken now. The run is spent (the
    coroutine went on from where it stood); ask again later, replaying from the journal."""


class _Suspend(BaseException):
    # Thrown into agent code at the read that cannot be answered: a BaseException, so that the
    # agent's own `except Exception` does not swallow it and go on.
    pass


class Run:
    def __init__(self, definition: AgentDefinition, task_id: str, raw_input: Any, *, strict: bool = False):
        self.definition = definition
        self.task_id = task_id
        self.raw_input = raw_input
        self.strict = strict
        self.loop = Loop()
        self.ctx = Context(self, task_id)
        self.decided = 0  # the seq of the last decision taken
        self.issued = 0  # positions handed out so far
        self.now = 0.0
        self.usage = Usage()
        self._handles: dict[int, Action[Any]] = {}  # unresolved, by position
        # (decision seq, index) -> position, for the unresolved: how a result names its action.
        self._where: dict[tuple[int, int], int] = {}
        # Made when first needed (an empty set is 216 bytes, and tens of thousands of runs park):
        self._cancel_sent: set[int] | None = None  # given-up positions already asked to be cancelled
        self._idle_applied: set[tuple[int, int]] | None = None  # applied in idle steps since a kept one
        self.now_read = False  # ctx.now() was read in this step
        self._main: Task[Any] | None = None
        self._step_commands: list[Command] = []
        self._events: list[tuple[str, Any]] = []
        self._expect: tuple[str, ...] | None = None  # replaying: the fingerprints the journal has
        self._expect_base = 0
        self._patches_seen: set[str] = set()
        self._patch_values: dict[str, bool] = {}
        self._patches_new: list[str] = []
        self.poison: Final | None = None  # set once the run can go no further
        self.cancelling = False  # the task's cancel has reached the agent
        self._tools_given: dict[str, Any] | None = None  # what the caller handed in for this decision
        self._tools_recorded: dict[str, Any] | None = None  # replaying: what the decision read then
        self._tools_read: dict[str, Any] | None = None  # read in this decision: goes in its memo
        self._unready = ""  # what the agent asked for that was not handed in

    # ---------------------------------------------------------------- stepping

    def advance(
        self,
        seq: int,
        now: float,
        delivered: list[Delivery],
        replay: Recorded | None = None,
        cancelling: bool = False,
        tools: dict[str, Any] | None = None,
    ) -> Step:
        """Apply the results handed in, in their order, and take decision `seq`. With `replay`,
        check the code against that recorded decision instead. `cancelling`: the task is being
        cancelled; from the first such decision on, actions cut off raise `Cancelled` where they
        are awaited, and so does every new action outside `ctx.shield()`. `tools`: the executor's
        tools (name -> {description, args_schema, repeat}), for `ctx.tools()`. Raises `Unready`
        when the agent reads what was not handed in."""
        first_cancel = cancelling and not self.cancelling
        self.cancelling = self.cancelling or cancelling
        if seq != self.decided + 1:
            raise ProtocolError(f"decision {seq} asked of a run at decision {self.decided}")
        if self._idle_applied:  # handed in again after an idle step: applied already
            delivered = [d for d in delivered if (d[0], d[1]) not in self._idle_applied]
        positions = []
        for action_seq, index, _ in delivered:
            position = self._where.get((action_seq, index))
            if position is None:
                raise ProtocolError(f"a result for action {action_seq}.{index}, which is not open")
            positions.append(position)
        self.now, self.now_read = now, False
        self._step_commands, self._events, self._patches_new = [], [], []
        self._expect = replay.fingerprints if replay is not None else None
        self._expect_base = self.issued
        self._tools_given, self._tools_read = tools, None
        self._tools_recorded = replay.tools if replay is not None else None
        if replay is not None:
            self._patches_seen.update(replay.patches)
        with _strict.guard(self.definition.source_file, self.strict) as violations:
            if self._main is None:
                self._start()
            self._run_loop(violations)
            for position, (action_seq, index, outcome) in zip(positions, delivered, strict=True):
                if self.poison is not None or self._unready:
                    break
                self.usage = self.usage + outcome.cost
                handle = self._handles.pop(position)
                del self._where[(action_seq, index)]
                if self._cancel_sent:
                    self._cancel_sent.discard(position)
                if first_cancel and not outcome.ok:
                    handle.set_error(Cancelled("the task was cancelled"))
                else:
                    handle.resolve(handle.command.result_of(outcome))
                self._run_loop(violations)
        if self._unready:
            raise Unready(self._unready)
        self.decided = seq
        for index, command in enumerate(self._step_commands):
            self._where[(seq, index)] = command.position
        step = self._step()
        if replay is None and not first_cancel and not self.cancelling and _is_idle(step, self.now_read):
            step.idle = True
            self.decided = seq - 1
            self._idle_applied = (self._idle_applied or set()) | {(s, i) for s, i, _ in delivered}
        else:
            self._idle_applied = None
        return step

    def _start(self) -> None:
        violations = self.definition.input.violations(self.raw_input)
        if violations:
            self._fail("INVALID_INPUT", "; ".join(f"{f}: {d}" for f, d in violations))
            return
        value = self.definition.input.parse(self.raw_input)
        self._main = Task(self.loop, self.definition.fn(self.ctx, value))

    def _run_loop(self, violations: list[str]) -> None:
        self.loop.run_until_quiet(
            stop=lambda: self.poison is not None or bool(violations) or bool(self._unready)
        )
        if violations and self.poison is None:
            self._fail("NONDETERMINISTIC_CALL", violations[0])

    def _step(self) -> Step:
        memo = {
            "sdk": MEMO_FORMAT,
            "agent": self.definition.name,
            "version": self.definition.version,
            "now": self.now,
            "issued": self.issued,
            "patches": self._patches_new,
        }
        if self.cancelling:
            memo["cancelling"] = True
        if self._tools_read is not None:
            memo["tools"] = self._tools_read
        replaying = self._expect is not None
        if self.poison is None and self._expect is not None and len(self._step_commands) < len(self._expect):
            missing = self._expect_base + len(self._step_commands)
            self._nondeterminism(missing, self._expect[len(self._step_commands)], "", "")
        if self.poison is None and self._main is not None and self._main.done():
            self.poison = self._final_of(self._main)
        if self.poison is None and not self._step_commands and all(h.done() for h in self._handles.values()):
            self._fail(
                "AGENT_STALLED",
                "the agent waits on nothing the journal can settle "
                "(it awaits no action, or only ones it gave up)",
            )
        events = [] if replaying else self._events
        # Given up (a lost race) but still running: the coordinator stops them now.
        sent = self._cancel_sent or ()
        given_up = [p for p, h in self._handles.items() if h.done() and p not in sent]
        cancel: list[tuple[int, int]] = []
        if given_up:
            self._cancel_sent = {*sent, *given_up}
            where = {p: w for w, p in self._where.items()}
            cancel = [where[p] for p in sorted(given_up)]
        if self.poison is not None:
            return Step([], events, memo, final=self.poison, cancel=cancel)
        return Step(list(self._step_commands), events, memo, cancel=cancel)

    # ---------------------------------------------------------------- what Context calls

    def issue(
        self,
        kind: Kind,
        target: str,
        body: dict[str, Any],
        options: Options,
        key: str,
        check: bool,
        call_site: str,
    ) -> Action[Any]:
        if self.cancelling and (self.loop.current is None or not self.loop.current.shield_depth):
            raise Cancelled(
                "the task is being cancelled: start cleanup actions inside `async with ctx.shield():`"
            )
        command = Command(self.issued, kind, target, body, options, key, check, call_site)
        try:
            command.fingerprint  # noqa: B018 - computed here, so that bad arguments fail at the call
        except (TypeError, ValueError) as exc:
            raise TypeError(f"ctx.{kind.value} arguments must be JSON: {exc}") from None
        self.issued += 1
        handle: Action[Any] = Action(self.loop, command)
        if self._expect is not None and self.poison is None:
            index = command.position - self._expect_base
            recorded = self._expect[index] if index < len(self._expect) else ""
            if recorded != command.fingerprint:
                self._nondeterminism(command.position, recorded, command.fingerprint, call_site)
        self._handles[command.position] = handle
        self._step_commands.append(command)
        return handle

    def read_tools(self) -> dict[str, Any]:
        """The executor's tools as this decision sees them: on replay, what the decision read when
        it was first taken (recorded in its memo), so the agent takes the same path."""
        if self._tools_recorded is not None:
            return self._tools_recorded
        if not self._tools_given:
            self._unready = "the executor's tools are not known now (is the executor up?)"
            raise _Suspend
        self._tools_read = self._tools_given
        return self._tools_given

    def patched(self, change_id: str) -> bool:
        if change_id not in self._patch_values:
            if self._expect is not None:  # replaying: new only where the change first ran
                self._patch_values[change_id] = change_id in self._patches_seen
            else:
                self._patch_values[change_id] = True
                self._patches_seen.add(change_id)
                self._patches_new.append(change_id)
        return self._patch_values[change_id]

    def emit(self, kind: str, data: Any) -> None:
        if not EVENT_KIND.match(kind):
            raise ValueError(f"event kind {kind!r}: lower case letters, digits and _ . - (up to 63)")
        json.dumps(data, allow_nan=False)  # refuse what cannot be an event now, where the call is
        self._events.append((kind, data))

    # ---------------------------------------------------------------- endings

    def _fail(self, reason: str, message: str, **details: Any) -> None:
        self.poison = Final(ok=False, reason=reason, message=message, details=details)

    def _nondeterminism(self, position: int, recorded: str, asked: str, call_site: str) -> None:
        if recorded and asked:
            what = f"the code asks for {asked} where the journal has {recorded}"
        elif recorded:
            what = f"the code did not ask for the journal's {recorded}"
        else:
            what = f"the code asks for {asked} where the journal's decision had ended"
        self._fail(
            "NONDETERMINISM",
            f"{self.definition.name} v{self.definition.version}, action {position}: {what}"
            + (f" (at {call_site})" if call_site else ""),
            agent=self.definition.name,
            version=self.definition.version,
            position=position,
            journal_fingerprint=recorded,
            code_fingerprint=asked,
            call_site=call_site,
        )

    def _final_of(self, main: Task[Any]) -> Final:
        error = main.error()
        if error is None:
            value = main.result()
            if hasattr(value, "model_dump"):
                value = value.model_dump(mode="json")
            elif is_dataclass(value) and not isinstance(value, type):
                value = asdict(value)
            try:
                return Final(ok=True, result_json=json.dumps(value, allow_nan=False))
            except (TypeError, ValueError) as exc:
                return Final(ok=False, reason="RESULT_NOT_JSON", message=f"the agent returned {exc}")
        trace = "".join(traceback.format_exception(error))[-MAX_TRACEBACK:]
        if isinstance(error, AgentError):
            details: dict[str, Any] = {"traceback": trace}
            if error.details is not None:
                details["details"] = error.details
            result_json = ""
            if error.task_result is not None:
                try:
                    result_json = json.dumps(error.task_result, allow_nan=False)
                except (TypeError, ValueError) as exc:
                    return Final(ok=False, reason="RESULT_NOT_JSON", message=f"the agent failed with {exc}")
            return Final(
                ok=False, result_json=result_json, reason=error.reason, message=error.message, details=details
            )
        return Final(
            ok=False,
            reason="AGENT_ERROR",
            message=f"{type(error).__name__}: {error}",
            details={"traceback": trace},
        )


def _is_idle(step: Step, now_read: bool) -> bool:
    return not (
        step.commands
        or step.events
        or step.cancel
        or step.final
        or step.memo["patches"]
        or now_read
        or "tools" in step.memo
    )


def replay(
    definition: AgentDefinition,
    task_id: str,
    raw_input: Any,
    journal: list[Recorded],
    *,
    strict: bool = False,
    tools: dict[str, Any] | None = None,
) -> tuple[Run, Step | None]:
    """A run brought up to the end of the journal. The step is a failure (NONDETERMINISM ...) that
    stopped the replay, or None when the run is ready for the results that came in since. `tools`:
    for a decision that reads them where the journal has none recorded (code that changed)."""
    run = Run(definition, task_id, raw_input, strict=strict)
    for record in journal:
        step = run.advance(
            record.seq,
            record.now,
            list(record.delivered),
            replay=record,
            cancelling=record.cancelling,
            tools=tools,
        )
        if step.final is not None:
            return run, step
    return run, None
