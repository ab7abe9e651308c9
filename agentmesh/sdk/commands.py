"""What an agent asks for: one `Command` per `ctx.*` call, with the fingerprint the journal keeps.

A command is plain data (its body mirrors the action messages of protos/agentmesh/v1/common.proto);
the planner turns it into an `Action`. The fingerprint names the kind, the tool or model, a hash of
the canonical arguments and the caller's key: replay compares it, position by position, with the
fingerprint recorded when the action was first asked for.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agentmesh.sdk.results import (
    Child,
    EmbedResult,
    ExecResult,
    InferResult,
    InputResult,
    Outcome,
    Result,
    SleepResult,
    SpawnResult,
)


class Kind(StrEnum):
    EXEC = "exec"
    INFER = "infer"
    EMBED = "embed"
    SPAWN = "spawn"
    INPUT = "input"
    SLEEP = "sleep"


class Join(StrEnum):
    ALL = "all"  # wait for every child; the spawn fails if one failed
    ANY = "any"  # the first child to succeed wins; the others are cancelled
    FAIL_FAST = "fail_fast"  # wait for every child; the first failure cancels the rest


@dataclass(frozen=True)
class RetryPolicy:
    """How the coordinator retries a failed action (common.proto's RetryPolicy)."""

    attempts: int = 1
    backoff_s: float = 0.0
    max_backoff_s: float = 0.0
    retry_on: tuple[str, ...] = ()
    # After an ambiguous failure (its worker died mid-run): "rerun", "fail", or None (rerun only
    # what the executor declares safe to repeat).
    on_ambiguous: str | None = None

    def __post_init__(self) -> None:
        if self.attempts < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("RetryPolicy: attempts and backoffs must be >= 0")
        if self.on_ambiguous not in (None, "rerun", "fail"):
            raise ValueError("RetryPolicy.on_ambiguous is 'rerun', 'fail' or None")


@dataclass(frozen=True)
class Options:
    """Per-action options that are not part of what the action does (not fingerprinted)."""

    timeout_s: float = 0.0
    retry: RetryPolicy | None = None
    share_identical: bool = False


@dataclass(frozen=True)
class Command:
    position: int
    kind: Kind
    target: str  # the tool, the model, the child agent, or "" where the kind has none
    body: dict[str, Any]
    options: Options = field(default_factory=Options)
    key: str = ""
    check: bool = True
    call_site: str = ""  # file:line of the ctx.* call, for errors

    @functools.cached_property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(_canonical(self.body).encode()).hexdigest()[:16]
        return f"{self.kind}:{self.target}:{digest}" + (f":{self.key}" if self.key else "")

    def describe(self) -> str:
        name = f"{self.kind} {self.target}".strip()
        return f"{name} ({self.key})" if self.key else name

    def result_of(self, outcome: Outcome) -> Result:
        """The typed result that `await` on this command returns."""
        return _RESULT_OF[self.kind](outcome)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_bytes_digest)


def _bytes_digest(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "sha256:" + hashlib.sha256(value).hexdigest()
    raise TypeError(f"not JSON-serializable: {type(value).__name__}")


def _common(outcome: Outcome) -> dict[str, Any]:
    return {
        "status": outcome.status,
        "reason": outcome.reason,
        "message": outcome.message,
        "cost": outcome.cost,
    }


def _output(outcome: Outcome) -> dict[str, Any]:
    return outcome.output if isinstance(outcome.output, dict) else {}


def _exec(outcome: Outcome) -> ExecResult:
    return ExecResult(
        **_common(outcome),
        exit_code=outcome.exit_code,
        stdout=outcome.stdout,
        stderr=outcome.stderr,
        output=outcome.output,
        files=dict(outcome.artifacts),
        attempts=outcome.attempts,
    )


def _infer(outcome: Outcome) -> InferResult:
    out = _output(outcome)
    return InferResult(
        **_common(outcome), text=str(out.get("text", "")), finish_reason=str(out.get("finish_reason", ""))
    )


def _embed(outcome: Outcome) -> EmbedResult:
    return EmbedResult(**_common(outcome), vectors=list(_output(outcome).get("vectors", [])))


def _spawn(outcome: Outcome) -> SpawnResult:
    children = [
        Child(
            id=c.get("id", ""),
            state=c.get("state", ""),
            result=c.get("result"),
            error=c.get("error"),
            message=c.get("message"),
        )
        for c in _output(outcome).get("children", [])
    ]
    return SpawnResult(**_common(outcome), children=children)


def _input(outcome: Outcome) -> InputResult:
    return InputResult(**_common(outcome), data=outcome.output)


def _sleep(outcome: Outcome) -> SleepResult:
    return SleepResult(**_common(outcome), slept_s=float(_output(outcome).get("slept_s", 0.0)))


_RESULT_OF = {
    Kind.EXEC: _exec,
    Kind.INFER: _infer,
    Kind.EMBED: _embed,
    Kind.SPAWN: _spawn,
    Kind.INPUT: _input,
    Kind.SLEEP: _sleep,
}
