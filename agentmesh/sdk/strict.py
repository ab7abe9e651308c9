"""Strict mode: agent code that reads the wall clock, draws random numbers, makes uuids, waits on
asyncio, opens sockets or subprocesses, or opens files for writing is stopped at the call.

Those calls answer differently on replay, so a task that used one could take another path after a
crash. The guards are installed once per process and cost one thread-local read per call elsewhere;
they fire only for calls made directly from the agent's own source file while its decision runs,
so libraries the agent calls (logging reads the clock) are untouched.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from agentmesh.sdk.results import NondeterministicCall

_state = threading.local()
_installed = False
_install_lock = threading.Lock()

# (module, attribute, what to use instead)
_GUARDED: list[tuple[Any, str, str]] = [
    (time, "time", "ctx.now()"),
    (time, "time_ns", "ctx.now()"),
    (time, "sleep", "await ctx.sleep()"),
    (random, "random", "ctx.random()"),
    (random, "randint", "ctx.randint()"),
    (random, "randrange", "ctx.randint()"),
    (random, "choice", "ctx.random()"),
    (random, "shuffle", "ctx.random()"),
    (random, "uniform", "ctx.random()"),
    (random, "getrandbits", "ctx.random()"),
    (uuid, "uuid1", "ctx.uuid()"),
    (uuid, "uuid4", "ctx.uuid()"),
    (os, "urandom", "ctx.random()"),
    (os, "system", "ctx.exec('shell', ...)"),
    (asyncio, "wait", "ctx.first() or ctx.settled()"),
    (asyncio, "as_completed", "ctx.first()"),
    (asyncio, "sleep", "await ctx.sleep()"),
    (asyncio, "gather", "ctx.gather()"),
    (socket, "create_connection", "ctx.exec(..., network=True)"),
    (subprocess, "run", "ctx.exec('shell', ...)"),
    (subprocess, "Popen", "ctx.exec('shell', ...)"),
    (subprocess, "check_output", "ctx.exec('shell', ...)"),
]


def _forbid(what: str, instead: str) -> None:
    message = f"{what} in agent code answers differently on replay: use {instead}"
    _state.violations.append(message)
    raise NondeterministicCall(message)


def _from_agent() -> bool:
    active = getattr(_state, "file", None)
    return active is not None and sys._getframe(2).f_code.co_filename == active


def _wrap(original: Callable[..., Any], what: str, instead: str) -> Callable[..., Any]:
    if isinstance(original, type):  # a class (subprocess.Popen): guard construction, keep the type

        class Guarded(original):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                active = getattr(_state, "file", None)
                if active is not None and sys._getframe(1).f_code.co_filename == active:
                    _forbid(what, instead)
                super().__init__(*args, **kwargs)

        Guarded.__name__ = Guarded.__qualname__ = original.__name__
        return Guarded

    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if _from_agent():
            _forbid(what, instead)
        return original(*args, **kwargs)

    return guarded


def _guard_open(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def guarded(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(c in mode for c in "wax+") and _from_agent():
            _forbid(f"open({file!r}, {mode!r})", "ctx.exec() with output_files")
        return original(file, mode, *args, **kwargs)

    return guarded


def _guard_socket_connect(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def guarded(self: socket.socket, *args: Any, **kwargs: Any) -> Any:
        if _from_agent():
            _forbid("socket.connect", "ctx.exec(..., network=True)")
        return original(self, *args, **kwargs)

    return guarded


def install() -> None:
    """Put the guards in place (idempotent). Done before agent modules are imported, so that a
    `from time import time` in them binds the guarded function."""
    global _installed
    with _install_lock:
        if _installed:
            return
        for module, name, instead in _GUARDED:
            setattr(module, name, _wrap(getattr(module, name), f"{module.__name__}.{name}", instead))
        builtins.open = _guard_open(builtins.open)
        socket.socket.connect = _guard_socket_connect(socket.socket.connect)  # type: ignore[method-assign]
        _installed = True


@contextlib.contextmanager
def guard(agent_file: str, enabled: bool) -> Iterator[list[str]]:
    """While the block runs (one decision), calls from `agent_file` to a guarded function raise;
    the list collects what was caught, so a run stops even where the agent catches the error."""
    violations: list[str] = []
    if not enabled:
        yield violations
        return
    install()
    previous = getattr(_state, "file", None), getattr(_state, "violations", None)
    _state.file, _state.violations = agent_file, violations
    try:
        yield violations
    finally:
        _state.file, _state.violations = previous
