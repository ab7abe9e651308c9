"""What an action comes back as, and the errors an agent sees. Plain data: no protobuf, no gRPC.

`Outcome` is one journal entry's result as recorded by the coordinator. The typed results
(`ExecResult`, `InferResult`, ...) are what `await ctx.exec(...)` and friends return; a failed action
raises `ActionFailed` carrying its result unless the call said `check=False`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    OK = "OK"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"
    # Not run: its group settled first (a fail-fast sibling failed, or a race was won).
    SKIPPED = "SKIPPED"


@dataclass(frozen=True)
class Usage:
    """Resource use and its price: of one action, or summed over the actions so far (`ctx.usage`)."""

    tokens_in: int = 0
    tokens_out: int = 0
    gpu_ms: float = 0.0
    cpu_ms: float = 0.0
    wall_ms: float = 0.0
    usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.tokens_in + other.tokens_in,
            self.tokens_out + other.tokens_out,
            self.gpu_ms + other.gpu_ms,
            self.cpu_ms + other.cpu_ms,
            self.wall_ms + other.wall_ms,
            self.usd + other.usd,
        )


@dataclass(frozen=True)
class Outcome:
    """One action's recorded result, whatever its kind."""

    status: Status
    output: Any = None  # the tool's structured output (parsed output_json)
    exit_code: int = 0
    stdout: str = ""
    stderr: str = ""
    reason: str = ""
    message: str = ""
    cost: Usage = field(default_factory=Usage)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


@dataclass(frozen=True)
class Result:
    status: Status
    reason: str
    message: str
    cost: Usage

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


@dataclass(frozen=True)
class ExecResult(Result):
    exit_code: int
    stdout: str
    stderr: str
    output: Any
    files: dict[str, bytes]
    attempts: int


@dataclass(frozen=True)
class InferResult(Result):
    text: str
    finish_reason: str

    @property
    def usage(self) -> Usage:
        return self.cost


@dataclass(frozen=True)
class EmbedResult(Result):
    vectors: list[list[float]]


@dataclass(frozen=True)
class Child:
    id: str
    state: str
    result: Any
    error: str | None
    message: str | None


@dataclass(frozen=True)
class SpawnResult(Result):
    children: list[Child]

    @property
    def result(self) -> Any:
        """The result of the child that decided the join: the only one, or the winner of an any-join."""
        for child in self.children:
            if child.state == "SUCCEEDED":
                return child.result
        return None


@dataclass(frozen=True)
class InputResult(Result):
    data: Any


@dataclass(frozen=True)
class SleepResult(Result):
    slept_s: float


@dataclass(frozen=True)
class Tool:
    """One tool of the executor, as it declares it (`ctx.tools()`)."""

    name: str
    description: str
    args_schema: dict[str, Any]  # JSON Schema (draft 2020-12) of the tool's arguments
    repeat: str  # how safe it is to run again: "REPEAT_SAFETY_SAFE", "..._SANDBOXED", "..._UNSAFE"


# --------------------------------------------------------------------------- errors an agent sees


class AgentError(Exception):
    """Raise it (or a subclass) to end the task FAILED with this reason and message. `result` (JSON)
    becomes the failed task's result (what was found before it failed: `task_result` here, since an
    `ActionFailed`'s `.result` is the action's); `details` goes into its error."""

    reason = "AGENT_FAILED"

    def __init__(
        self, message: str, *, reason: str | None = None, details: Any = None, result: Any = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        self.details = details
        self.task_result = result


class ActionFailed(AgentError):
    """An awaited action did not succeed; `result` holds everything it reported."""

    def __init__(self, what: str, result: Result) -> None:
        reason = result.reason or str(result.status)
        super().__init__(f"{what} {result.status.lower()}: {result.message or reason}", reason=reason)
        self.result = result


class Cancelled(AgentError):
    """The task is being cancelled."""

    reason = "CANCELLED"


class NondeterministicCall(AgentError):
    """Agent code called something whose answer differs on replay (strict mode)."""

    reason = "NONDETERMINISTIC_CALL"
