"""A deterministic loop for agent coroutines: no clock, no I/O, no threads.

Agent code awaits only `Handle`s (an action's handle, a combinator, a sub-coroutine). Whatever is
ready runs in FIFO order, and a handle's waiters run in the order they started waiting, so the same
results applied in the same order always drive the code down the same path. Awaiting anything else
(an asyncio future, `asyncio.sleep`) raises `ForeignAwait` into the agent.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

from agentmesh.sdk.results import AgentError, Cancelled

T = TypeVar("T")


class ForeignAwait(AgentError):
    reason = "FOREIGN_AWAIT"


class Loop:
    __slots__ = ("_ready", "current")

    def __init__(self) -> None:
        # A plain list, taken whole each round (FIFO across rounds): tens of thousands of parked
        # runs each keep one, and an empty list is a tenth of an empty deque.
        self._ready: list[Callable[[], None]] = []
        self.current: Task[Any] | None = None  # the coroutine being stepped

    def call_soon(self, fn: Callable[[], None]) -> None:
        self._ready.append(fn)

    def run_until_quiet(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Run everything that can run; `stop` is checked between steps (a poisoned run halts)."""
        while self._ready:
            batch, self._ready = self._ready, []
            for index, fn in enumerate(batch):
                if stop():
                    self._ready[:0] = batch[index:]
                    return
                fn()


class Handle(Generic[T]):
    """A value that will be there once: an action's result, a combinator's, a coroutine's."""

    def __init__(self, loop: Loop) -> None:
        self._loop = loop
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Handle[T]], None]] = []

    def done(self) -> bool:
        return self._done

    def failed(self) -> bool:
        return self._done and self._error is not None

    def result(self) -> T:
        if not self._done:
            raise RuntimeError("handle not done")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[no-any-return]

    def error(self) -> BaseException | None:
        return self._error

    def set_result(self, value: T) -> None:
        self._finish(value, None)

    def set_error(self, error: BaseException) -> None:
        self._finish(None, error)

    def _finish(self, value: Any, error: BaseException | None) -> None:
        if self._done:
            return
        self._done, self._value, self._error = True, value, error
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            self._loop.call_soon(lambda cb=callback: cb(self))

    def add_done(self, callback: Callable[[Handle[T]], None]) -> None:
        if self._done:
            self._loop.call_soon(lambda: callback(self))
        else:
            self._callbacks.append(callback)

    def remove_done(self, callback: Callable[[Handle[T]], None]) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def cancel(self) -> None:
        """Give up on it (a lost race): waiters see `Cancelled`."""
        self.set_error(Cancelled("given up: another branch won"))

    def __await__(self) -> Generator[Handle[T], None, T]:
        if not self._done:
            yield self
        return self.result()


class Task(Handle[T]):
    """A coroutine run on the loop; done when it returns or raises."""

    def __init__(self, loop: Loop, coro: Coroutine[Any, Any, T]) -> None:
        super().__init__(loop)
        self._coro = coro
        self._waiting_on: Handle[Any] | None = None
        self._throw: BaseException | None = None
        # Inside `ctx.shield()`: may still start actions while the task is being cancelled. A branch
        # started from a shielded one is shielded too.
        parent = loop.current
        self.shield_depth = 1 if parent is not None and parent.shield_depth else 0
        loop.call_soon(self._step)

    def _step(self) -> None:
        if self._done:
            return
        throw, self._throw = self._throw, None
        outer, self._loop.current = self._loop.current, self
        try:
            yielded = self._coro.throw(throw) if throw is not None else self._coro.send(None)
        except StopIteration as stop:
            self.set_result(stop.value)
            return
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - the agent's own error (sys.exit too) is the task's
            self.set_error(exc)
            return
        finally:
            self._loop.current = outer
        if isinstance(yielded, Handle):
            self._waiting_on = yielded
            yielded.add_done(self._wake)
        else:
            self._throw = ForeignAwait(
                f"agent code awaited {type(yielded).__name__}, which is not an agentmesh ctx awaitable: "
                "await only ctx.* calls, ctx.gather/first/settled, and your own async functions"
            )
            self._loop.call_soon(self._step)

    def _wake(self, handle: Handle[Any]) -> None:
        if handle is not self._waiting_on:  # stale: the task was cancelled off this await
            return
        self._waiting_on = None
        self._step()

    def cancel(self) -> None:
        """Throw `Cancelled` into the coroutine at its current await."""
        if self._done:
            return
        if self._waiting_on is not None:
            self._waiting_on.remove_done(self._wake)
            self._waiting_on = None
        self._throw = Cancelled("given up: another branch won")
        self._loop.call_soon(self._step)

    def close(self) -> None:
        self._coro.close()


def as_handle(loop: Loop, aw: Any) -> Handle[Any]:
    if isinstance(aw, Handle):
        return aw
    if isinstance(aw, Coroutine):
        return Task(loop, aw)
    raise TypeError(f"expected a ctx awaitable or a coroutine, got {type(aw).__name__}")


def gather(loop: Loop, handles: list[Handle[Any]]) -> Handle[list[Any]]:
    """Every value, in argument order; the first error (in completion order) raises."""
    out: Handle[list[Any]] = Handle(loop)
    left = len(handles)
    if not left:
        out.set_result([])

    def settled(handle: Handle[Any]) -> None:
        nonlocal left
        left -= 1
        if out.done():  # an earlier branch failed it already
            return
        if handle.failed():
            out.set_error(handle.error())  # type: ignore[arg-type]
        elif not left:
            out.set_result([h.result() for h in handles])

    for handle in handles:
        handle.add_done(settled)
    return out


class Settled(Generic[T]):
    """One branch of `ctx.settled`: its value or its error."""

    __slots__ = ("value", "error")

    def __init__(self, value: T | None, error: BaseException | None) -> None:
        self.value, self.error = value, error

    @property
    def ok(self) -> bool:
        return self.error is None

    def __repr__(self) -> str:
        return f"Settled(error={self.error!r})" if self.error else f"Settled(value={self.value!r})"


def settled(loop: Loop, handles: list[Handle[Any]]) -> Handle[list[Settled[Any]]]:
    """Every branch's outcome, in argument order, once all have settled; never raises."""
    out: Handle[list[Settled[Any]]] = Handle(loop)
    left = len(handles)
    if not left:
        out.set_result([])

    def one(_handle: Handle[Any]) -> None:
        nonlocal left
        left -= 1
        if not left:
            out.set_result([Settled(None if h.failed() else h.result(), h.error()) for h in handles])

    for handle in handles:
        handle.add_done(one)
    return out


class NoWinner(AgentError):
    reason = "NO_WINNER"


class Race(Handle[Any]):
    """`ctx.first`: the first branch to succeed (and pass `where`) wins; the others are given up."""

    def __init__(self, loop: Loop, handles: list[Handle[Any]], where: Callable[[Any], bool] | None) -> None:
        super().__init__(loop)
        self.branches = handles
        self.where = where
        self._left = len(handles)
        if not handles:
            self.set_error(NoWinner("ctx.first() of nothing"))
        for handle in handles:
            handle.add_done(self._one)

    def _wins(self, handle: Handle[Any]) -> bool:
        if handle.failed():
            return False
        value = handle.result()
        if self.where is not None:
            return bool(self.where(value))
        return bool(getattr(value, "ok", True))

    def _one(self, handle: Handle[Any]) -> None:
        self._left -= 1
        if self._done:
            return
        try:
            won = self._wins(handle)
        except Exception as exc:  # noqa: BLE001 - a broken `where` fails the race, not the loop
            self.set_error(exc)
            return
        if won:
            self.set_result(handle.result())
            for other in self.branches:
                if other is not handle and not other.done():
                    other.cancel()
        elif not self._left:
            errors = [h.error() for h in self.branches if h.failed()]
            self.set_error(
                NoWinner(f"no branch of {len(self.branches)} succeeded", details=[repr(e) for e in errors])
            )
