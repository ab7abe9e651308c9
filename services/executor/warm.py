"""Warm sandboxes: fully isolated sandboxes started before their action arrives.

Starting a sandbox costs more than many actions do: the cgroup join, `setpriv` and bubblewrap's
namespaces and mounts take about 10 ms before the tool's first instruction. A warm slot has paid that
already. It is a complete full-isolation sandbox (its own workspace tmpfs and cgroups, the seccomp
filter, the unprivileged uid) whose innermost process is a POSIX shell blocked reading its stdin.
Taking a slot writes the action's files into its workspace, sets the action's cgroup limits, and
sends the shell a script that sets the action's rlimits and environment and `exec`s the tool with
stdin from /dev/null. From then on it is the action's sandbox, killed and removed when the action
ends like any other; it is never reused.

A thread keeps `size` slots ready, so the start-up runs beside the actions instead of in front of
them. Slots are named `warm-<pid>-<n>` in the executor's cgroup and workspace trees, so the executor's
crash reaping (everything under its trees) removes them too; bubblewrap's --die-with-parent takes
them down with the executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from services.executor import seccomp
from services.executor.cgroups import JOIN, CgroupLimits, CgroupRoot, CgroupTree
from services.executor.proctree import MARKER_ENV
from services.executor.sandbox import Sandbox
from services.executor.workspace import Workspaces

log = logging.getLogger(__name__)

WAITER = ["/bin/sh", "-s"]  # reads its script from stdin, runs it line by line
# Back off when slots cannot be made (disk full, cgroups gone): no busy loop of failures.
RETRY_S, MAX_RETRY_S = 1.0, 60.0
# A replacement is made once the actions that took slots have ended, or this long after the last
# take, whichever comes first. Making one moves processes between cgroups, and every move holds the
# kernel's cgroup threadgroup lock through an RCU grace period, which stalls every exiting process
# on the host: made right away, it lands on the kill of a short or cancelled action (cancel p99
# went from 6 to 15 ms). A long action's slot is still replaced soon after it started.
REFILL_DELAY_S = 0.1


def looks_idle(cgroup: Path, pids: list[int] | None = None) -> bool:
    """Whether an action cgroup is a ready warm slot, seen from outside the executor (tests and
    benchmarks looking into a running mesh): named warm-*, holding only bubblewrap and the shell
    waiting for its script. A slot an action had holds the action's processes, or none. `pids`:
    the cgroup's processes as the caller read them (judge what you list, not a later reading)."""
    if not cgroup.name.startswith("warm-"):
        return False
    if pids is None:
        pids = []
        with contextlib.suppress(OSError, ValueError):
            pids = [int(pid) for pid in (cgroup / "cgroup.procs").read_text().split()]
    argvs = []
    for pid in pids:
        with contextlib.suppress(OSError):
            argvs.append(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1])
    return bool(argvs) and all(_starting_or_waiting(argv) for argv in argvs)


def _starting_or_waiting(argv: list[bytes]) -> bool:
    """A process of a slot that no action has had: on its way in (the cgroup-joining shell, then
    setpriv, then bubblewrap, exec'ing one another) or the waiting shell."""
    if not argv or argv == [part.encode() for part in WAITER]:
        return True  # none: in the middle of an exec, or exiting
    if argv[:3] == [b"/bin/sh", b"-c", JOIN.encode()]:
        return True
    return os.path.basename(argv[0]) in (b"bwrap", b"setpriv")


@dataclass(frozen=True)
class Rlimits:
    """Per-process limits of an action: set by `prlimit` before a cold sandbox starts, by the
    waiter's `ulimit` in a warm one. Sizes in bytes."""

    cpu_seconds: int
    file_bytes: int
    open_files: int
    address_space: int

    def prlimit_argv(self, prlimit: str) -> list[str]:
        return [
            prlimit,
            # SIGXCPU at the soft limit (a process may catch it and save its work), SIGKILL a second on.
            f"--cpu={self.cpu_seconds}:{self.cpu_seconds + 1}",
            f"--fsize={self.file_bytes}",
            f"--nofile={self.open_files}",
            f"--as={self.address_space}",
            "--core=0",
            "--",
        ]

    def ulimit_script(self) -> str:
        # dash's units: -f in 512-byte blocks, -v in KiB (rounded down: never more than asked).
        # Hard and soft first, then the soft CPU limit a second below the hard one, as prlimit does.
        return (
            f"ulimit -t {self.cpu_seconds + 1} && ulimit -S -t {self.cpu_seconds}"
            f" && ulimit -f {self.file_bytes // 512} && ulimit -n {self.open_files}"
            f" && ulimit -v {self.address_space // 1024} && ulimit -c 0 || exit 125\n"
        )


def launch_script(argv: list[str], env: dict[str, str], rlimits: Rlimits) -> bytes:
    """What a warm slot's shell runs: every value quoted, so nothing in them is shell syntax."""
    exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
    return (rlimits.ulimit_script() + exports + f"exec {shlex.join(argv)} </dev/null\n").encode()


def can_launch(argv: list[str], env: dict[str, str]) -> bool:
    """A NUL cannot pass through a script (nor through exec); such actions take the cold path, which
    refuses them the same way as before."""
    return not any("\x00" in part for part in (*argv, *env.keys(), *env.values()))


@dataclass
class WarmSlot:
    name: str
    workspace: Path
    tree: CgroupTree
    proc: subprocess.Popen[bytes]

    def alive(self) -> bool:
        return self.proc.poll() is None


class WarmPool:
    """Up to `size` ready slots for actions at full isolation without network, at the executor's
    default workspace size (every other action starts cold)."""

    def __init__(
        self,
        size: int,
        workspaces: Workspaces,
        cgroups: CgroupRoot,
        sandbox: Sandbox,
        limits: CgroupLimits,
        workspace_bytes: int,
        env: dict[str, str],
    ) -> None:
        self.size = size
        self.workspaces = workspaces
        self.cgroups = cgroups
        self.sandbox = sandbox
        self.limits = limits
        self.workspace_bytes = workspace_bytes
        self.env = env
        self.taken = 0  # slots handed to actions (how often the pool was of use)
        self._out = 0  # taken slots whose action has not ended
        self._last_take = 0.0
        self._ready: list[WarmSlot] = []
        self._making: set[str] = set()
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._thread = threading.Thread(target=self._keep_filled, name="warm-sandboxes", daemon=True)
        self._thread.start()

    # -- for the executor ----------------------------------------------------------------------

    def take(self) -> WarmSlot | None:
        """A ready slot, now the caller's to kill and remove; None when there is none."""
        with self._lock:
            while self._ready:
                slot = self._ready.pop(0)
                self._wake.notify()
                if slot.alive():
                    self.taken += 1
                    self._out += 1
                    self._last_take = time.monotonic()
                    return slot
                log.warning("warm sandbox %s died before its action came; removed", slot.name)
                discard(slot, self.workspaces)
        return None

    def returned(self) -> None:
        """The action of a taken slot has ended (and its sandbox is gone)."""
        with self._lock:
            self._out -= 1
            self._wake.notify()

    def names(self) -> set[str]:
        """Cgroup and workspace names the pool holds (ready or being made); a taken slot's is not."""
        with self._lock:
            return {slot.name for slot in self._ready} | self._making

    def ready_trees(self) -> list[CgroupTree]:
        """The cgroups of the ready slots, for tests and benchmarks that look inside them."""
        with self._lock:
            return [slot.tree for slot in self._ready]

    def pids(self) -> set[int]:
        """Root processes of the ready slots: the executor's own children, not orphans to reap."""
        with self._lock:
            return {slot.proc.pid for slot in self._ready}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        self._thread.join(timeout=30)
        with self._lock:
            ready, self._ready = self._ready, []
        for slot in ready:
            discard(slot, self.workspaces)

    # -- the filling thread --------------------------------------------------------------------

    def _keep_filled(self) -> None:
        retry_s = RETRY_S
        while True:
            with self._lock:
                while not self._closed:
                    if len(self._ready) >= self.size:
                        self._wake.wait()
                        continue
                    hold = REFILL_DELAY_S - (time.monotonic() - self._last_take) if self._out else 0.0
                    if hold <= 0:
                        break
                    self._wake.wait(hold)
                if self._closed:
                    return
                name = f"warm-{os.getpid()}-{next(self._counter)}"
                self._making.add(name)
            try:
                slot = self._make(name)
                retry_s = RETRY_S
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any one failure
                log.warning(
                    "cannot make a warm sandbox (%s); actions start cold, next try in %gs",
                    exc,
                    retry_s,
                    exc_info=not isinstance(exc, OSError | subprocess.SubprocessError),
                )
                slot = None
            with self._lock:
                self._making.discard(name)
                if slot is not None and not self._closed:
                    self._ready.append(slot)
                    continue
                closed = self._closed
            if slot is not None:
                discard(slot, self.workspaces)
            if closed:
                return
            with self._lock:
                self._wake.wait(retry_s)
            retry_s = min(retry_s * 2, MAX_RETRY_S)

    def _make(self, name: str) -> WarmSlot:
        workspace = self.workspaces.make(name, self.workspace_bytes, {})
        tree: CgroupTree | None = None
        program_fd: int | None = None
        try:
            tree = self.cgroups.new(name, self.limits)
            if self.sandbox.seccomp_program is not None:
                program_fd = seccomp.program_fd(self.sandbox.seccomp_program)
            argv = tree.wrap([*self.sandbox.argv("full", False, workspace, program_fd), *WAITER])
            proc = subprocess.Popen(
                argv,
                cwd=workspace,
                env={**self.env, MARKER_ENV: name},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                pass_fds=() if program_fd is None else (program_fd,),
            )
        except BaseException:
            if tree is not None:
                tree.kill()
                tree.remove()
            self.workspaces.remove(workspace)
            raise
        finally:
            if program_fd is not None:
                os.close(program_fd)
        return WarmSlot(name, workspace, tree, proc)


def discard(slot: WarmSlot, workspaces: Workspaces) -> None:
    """Kill a slot's sandbox and remove its cgroups and workspace."""
    slot.tree.kill(root_pid=slot.proc.pid)
    with contextlib.suppress(OSError):
        slot.proc.kill()
    with contextlib.suppress(subprocess.SubprocessError):
        slot.proc.wait(timeout=5)
    for stream in _streams(slot.proc):
        with contextlib.suppress(OSError):
            stream.close()
    slot.tree.remove()
    workspaces.remove(slot.workspace)


def _streams(proc: subprocess.Popen[bytes]) -> list[IO[bytes]]:
    return [s for s in (proc.stdin, proc.stdout, proc.stderr) if s is not None]


class WarmProcess:
    """A taken slot running its action, with what the executor uses of asyncio's Process: pid,
    stdout and stderr readers on the running loop, wait(), returncode and kill(). The slot was
    started by another thread with `subprocess`, so its exit is watched through a pidfd."""

    def __init__(self, slot: WarmSlot) -> None:
        self.slot = slot
        self.pid = slot.proc.pid
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None
        self._transports: list[asyncio.BaseTransport] = []

    async def start(self, script: bytes) -> None:
        """Attach the output pipes to this loop, then hand the shell its script. Raises OSError
        (BrokenPipeError) when the slot's shell is gone."""
        loop = asyncio.get_running_loop()
        self.stdout = await self._reader(loop, self.slot.proc.stdout)
        self.stderr = await self._reader(loop, self.slot.proc.stderr)
        stdin = self.slot.proc.stdin
        assert stdin is not None
        try:
            stdin.write(script)
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    async def _reader(self, loop: asyncio.AbstractEventLoop, pipe: IO[bytes] | None) -> asyncio.StreamReader:
        assert pipe is not None
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        self._transports.append(transport)
        return reader

    @property
    def returncode(self) -> int | None:
        return self.slot.proc.returncode

    def kill(self) -> None:
        self.slot.proc.kill()

    async def wait(self) -> int:
        proc = self.slot.proc
        if proc.poll() is not None:
            return proc.returncode
        loop = asyncio.get_running_loop()
        pidfd = os.pidfd_open(proc.pid)
        try:
            exited = loop.create_future()
            loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
            try:
                await exited
            finally:
                loop.remove_reader(pidfd)
        finally:
            os.close(pidfd)
        return proc.wait()

    def close(self) -> None:
        for transport in self._transports:
            transport.close()
