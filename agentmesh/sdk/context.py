"""`Context`: everything an agent may do, as awaitables the journal records.

Each `ctx.*` action call takes its journal position when it is called (so a gather's actions are
numbered in argument order), not when it completes. Reading the clock, drawing random numbers and
making ids go through the context too, so a replay sees the same values.
"""

from __future__ import annotations

import random as _random
import sys
import uuid as _uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from agentmesh.sdk import loop as _loop
from agentmesh.sdk.commands import Command, Join, Kind, Options, RetryPolicy
from agentmesh.sdk.results import (
    ActionFailed,
    EmbedResult,
    ExecResult,
    InferResult,
    InputResult,
    Result,
    SleepResult,
    SpawnResult,
    Tool,
    Usage,
)

if TYPE_CHECKING:
    from agentmesh.sdk.run import Run

T = TypeVar("T")
_SDK_DIR = __file__.rsplit("/", 1)[0]


class Action(_loop.Handle[T]):
    """The handle of one recorded action: awaiting it gives its typed result."""

    def __init__(self, loop: _loop.Loop, command: Command) -> None:
        super().__init__(loop)
        self.command = command

    def resolve(self, result: Result) -> None:
        if self.command.check and not result.ok:
            self.set_error(ActionFailed(self.command.describe(), result))
        else:
            self.set_result(result)  # type: ignore[arg-type]


class Shield:
    def __init__(self, loop: _loop.Loop) -> None:
        self._task = loop.current

    def __enter__(self) -> Shield:
        if self._task is not None:
            self._task.shield_depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.shield_depth -= 1

    async def __aenter__(self) -> Shield:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)


def _call_site() -> str:
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_SDK_DIR):
        frame = frame.f_back  # type: ignore[assignment]
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"


def _retry(retry: RetryPolicy | int | None) -> RetryPolicy | None:
    return RetryPolicy(attempts=retry) if isinstance(retry, int) else retry


class Context:
    def __init__(self, run: Run, task_id: str) -> None:
        self._run = run
        self.task_id = task_id
        self._random: _random.Random | None = None

    # ---------------------------------------------------------------- actions

    def exec(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        files: Mapping[str, str | bytes] | None = None,
        output_files: Iterable[str] = (),
        network: bool = False,
        isolation: str = "",
        limits: Mapping[str, int] | None = None,
        timeout: float = 0.0,
        retry: RetryPolicy | int | None = None,
        share_identical: bool = False,
        key: str = "",
        check: bool = True,
        **tool_args: Any,
    ) -> Action[ExecResult]:
        """Run a tool of the executor (echo, python, shell, pytest, scan) in a sandbox. Tool arguments
        go as keywords (`code=`, `command=`) or, where one clashes with an option, in `args`."""
        body = {
            "args": {**(args or {}), **tool_args},
            "files": {k: v.encode() if isinstance(v, str) else bytes(v) for k, v in (files or {}).items()},
            "network": network,
            "output_files": sorted(output_files),
            "isolation": isolation,
            "limits": dict(limits or {}),
        }
        options = Options(timeout_s=timeout, retry=_retry(retry), share_identical=share_identical)
        return self._issue(Kind.EXEC, tool, body, options, key, check)

    def infer(
        self,
        prompt: str = "",
        *,
        messages: Iterable[Mapping[str, str]] = (),
        model: str = "",
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
        stop: Iterable[str] = (),
        timeout: float = 0.0,
        retry: RetryPolicy | int | None = None,
        key: str = "",
        check: bool = True,
    ) -> Action[InferResult]:
        """Generate text; its tokens stream to the task's watchers as they come."""
        body = {
            "model": model,
            "prompt": prompt,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "top_k": top_k,
            "seed": seed,
            "stop": list(stop),
        }
        return self._issue(
            Kind.INFER, model, body, Options(timeout_s=timeout, retry=_retry(retry)), key, check
        )

    def embed(
        self,
        texts: Iterable[str],
        *,
        model: str = "",
        timeout: float = 0.0,
        key: str = "",
        check: bool = True,
    ) -> Action[EmbedResult]:
        body = {"model": model, "texts": list(texts)}
        return self._issue(Kind.EMBED, model, body, Options(timeout_s=timeout), key, check)

    def spawn(
        self,
        agent: str,
        input: Any = None,  # noqa: A002 - the child's input
        *,
        priority: int = 0,
        labels: Mapping[str, str] | None = None,
        key: str = "",
        check: bool = True,
    ) -> Action[SpawnResult]:
        """Start one child task and wait for it; `.result` is its result."""
        return self.spawn_many(
            [(agent, input)], join=Join.ALL, priority=priority, labels=labels, key=key, check=check
        )

    def spawn_many(
        self,
        children: Iterable[tuple[str, Any]],
        *,
        join: Join | str = Join.ALL,
        priority: int = 0,
        labels: Mapping[str, str] | None = None,
        key: str = "",
        check: bool = True,
    ) -> Action[SpawnResult]:
        """Start child tasks joined as `all`, `any` (first success wins) or `fail_fast`."""
        specs = [
            {"agent": a, "input": i, "priority": priority, "labels": dict(labels or {})} for a, i in children
        ]
        if not specs:
            raise ValueError("spawn_many needs at least one child")
        target = ",".join(sorted({s["agent"] for s in specs}))
        return self._issue(
            Kind.SPAWN, target, {"children": specs, "join": str(Join(join))}, Options(), key, check
        )

    def input(
        self,
        prompt: str,
        *,
        schema: Any = None,
        timeout: float = 0.0,
        key: str = "",
        check: bool = True,
    ) -> Awaitable[Any]:
        """Wait, holding no worker, for a person to send input (`agentmesh input TASK_ID ...`). With a
        pydantic model as `schema`, the answer comes back as an instance of it; input that does not
        fit raises `ActionFailed` with reason INVALID_INPUT."""
        handle: Action[InputResult] = self._issue(
            Kind.INPUT, "", {"prompt": prompt, "timeout_s": float(timeout)}, Options(), key, check
        )
        if schema is None:
            return self._then(handle, lambda r: r.data if r.ok else r)
        from agentmesh.sdk.definition import InputSchema

        checker = InputSchema.of(schema)

        def parse(result: InputResult) -> Any:
            if not result.ok:
                return result
            violations = checker.violations(result.data)
            if violations:
                raise ActionFailed(
                    "input",
                    InputResult(
                        status=result.status.FAILED,
                        reason="INVALID_INPUT",
                        message="; ".join(f"{f}: {d}" for f, d in violations),
                        cost=result.cost,
                        data=result.data,
                    ),
                )
            return checker.parse(result.data)

        return self._then(handle, parse)

    def sleep(self, seconds: float, *, key: str = "") -> Action[SleepResult]:
        """A durable timer: the task holds no worker and no memory while it waits."""
        return self._issue(Kind.SLEEP, "", {"seconds": float(seconds)}, Options(), key, True)

    # ---------------------------------------------------------------- combinators

    def gather(self, *aws: Awaitable[Any]) -> _loop.Handle[list[Any]]:
        """Every result in argument order; the first failure raises (the rest still run)."""
        return _loop.gather(self._run.loop, [_loop.as_handle(self._run.loop, a) for a in aws])

    def settled(self, *aws: Awaitable[Any]) -> _loop.Handle[list[_loop.Settled[Any]]]:
        """Every branch's value or error, once all are done; never raises."""
        return _loop.settled(self._run.loop, [_loop.as_handle(self._run.loop, a) for a in aws])

    def first(
        self, aws: Iterable[Awaitable[Any]], *, where: Callable[[Any], bool] | None = None
    ) -> _loop.Race:
        """The first branch to succeed (and satisfy `where`) wins and the others are given up.
        Raises `NoWinner` when none does."""
        return _loop.Race(self._run.loop, [_loop.as_handle(self._run.loop, a) for a in aws], where)

    def shield(self) -> Shield:
        """`async with ctx.shield():` (or `with`): actions started inside still run while the task
        is being cancelled, and are paid for; outside it, every `ctx.*` action raises `Cancelled`
        once the cancel has reached the agent."""
        return Shield(self._run.loop)

    @property
    def cancelling(self) -> bool:
        """True once the task's cancel has reached the agent."""
        return self._run.cancelling

    # ---------------------------------------------------------------- deterministic values

    def now(self) -> float:
        """Unix seconds of the decision being taken: the same value on replay."""
        self._run.now_read = True
        return self._run.now

    @property
    def _rng(self) -> _random.Random:
        # Seeded from the task: the same draws on every replay, different ones per task. Made on
        # first use: its state is 2.5 KB, and most agents never draw.
        if self._random is None:
            self._random = _random.Random(self.task_id)
        return self._random

    def random(self) -> float:
        return self._rng.random()

    def randint(self, a: int, b: int) -> int:
        return self._rng.randint(a, b)

    def uuid(self) -> _uuid.UUID:
        return _uuid.UUID(int=self._rng.getrandbits(128), version=4)

    def tools(self) -> dict[str, Tool]:
        """The executor's tools as it declares them (name, description, JSON Schema of the
        arguments), read at this decision and recorded with it: a replay sees the same catalogue.
        When the coordinator cannot read them (the executor is down) the decision is asked again
        later instead."""
        return {
            name: Tool(name, spec["description"], spec["args_schema"], spec["repeat"])
            for name, spec in self._run.read_tools().items()
        }

    @property
    def usage(self) -> Usage:
        """What the actions applied so far used and cost."""
        return self._run.usage

    def patched(self, change_id: str) -> bool:
        """True where new code may take its new path: always in a fresh task, and in an in-flight
        task from the point where the change first ran. Keep the old branch until no task that
        started before the change is still running."""
        return self._run.patched(change_id)

    def emit(self, kind: str, data: Any = None) -> None:
        """A progress event (`agent.<kind>`) for the task's watchers; not repeated on replay."""
        self._run.emit(kind, data)

    # ---------------------------------------------------------------- internals

    def _issue(
        self, kind: Kind, target: str, body: dict[str, Any], options: Options, key: str, check: bool
    ) -> Action[Any]:
        return self._run.issue(kind, target, body, options, key, check, _call_site())

    def _then(self, handle: _loop.Handle[Any], fn: Callable[[Any], Any]) -> _loop.Handle[Any]:
        async def chained() -> Any:
            return fn(await handle)

        return _loop.Task(self._run.loop, chained())
