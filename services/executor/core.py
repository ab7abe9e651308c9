"""The executor's core: run one tool action in a fresh workspace and contain its process tree.

Guarantees:
- Each action runs in a fresh workspace (a size-capped tmpfs where the host allows) holding only its
  declared files, inside the sandbox its isolation level asks for (sandbox.py), in cgroups that cap
  its memory, processes and CPU (cgroups.py); the workspace is removed afterwards. An action whose
  isolation this host cannot give is refused, unless the operator chose a permissive policy.
- When the action ends (its root process exits, it times out, it is cancelled, or the executor
  shuts down) every process it started is killed and reaped: nothing outlives the action.
- Output is streamed in chunks as it comes and kept up to `max_output_bytes` (then `truncated`).
- A repeated (action_id, attempt) is not run twice: while live it joins the running one, after it
  finished it gets the recorded result (the coordinator re-dispatches after a crash).
This module does not import grpc or zmq.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protos.agentmesh.v1 import common_pb2 as pb
from services.executor import cgroups, proctree, seccomp, tools, warm
from services.executor.sandbox import LEVELS, WORKSPACE, Protection, Sandbox, SandboxConfig
from services.executor.workspace import Workspaces, check_names, read_inside
from services.runtime.errors import AgentMeshError, FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

OutputSink = Callable[[str, bytes], None]
READ_CHUNK = 64 * 1024
COALESCE_S = 0.02
# Finished results kept to answer a repeated (action, attempt) without running it again: bounded in
# count and in bytes (a result may carry up to max_output_bytes of output).
DONE_CACHE_ENTRIES = 10_000
DONE_CACHE_BYTES = 64 << 20
# Reports a tool leaves in the workspace (JUnit XML, bandit JSON) are read up to this size.
REPORT_CAP = 16 << 20


@dataclass(frozen=True)
class ExecutorLimits:
    max_output_bytes: int = 1 << 20
    max_artifact_bytes: int = 1 << 20
    default_timeout_s: float = 600.0
    workspace_root: str = ""
    python: str = ""
    # When the host cannot give an action the isolation it requires: refuse it (strict) or run it
    # with what there is (permissive).
    isolation_policy: str = "strict"
    sandbox: SandboxConfig = SandboxConfig()
    # Resource limits of every process of an action (setrlimit through util-linux `prlimit`).
    max_file_bytes: int = 64 << 20
    max_open_files: int = 1024
    max_address_space: int = 8 << 30
    # Per action, through cgroups and the workspace's tmpfs; an action may ask for less.
    memory_bytes: int = 1 << 30
    pids: int = 256
    cpu_millicores: int = 1000
    workspace_bytes: int = 256 << 20
    # Full-isolation sandboxes kept started ahead of their actions (warm.py); 0: every action starts
    # its sandbox itself.
    warm_sandboxes: int = 2


@dataclass(frozen=True)
class _Limits:
    """What one action gets: the executor's limits, lowered where the action asked."""

    memory_bytes: int
    pids: int
    cpu_millicores: int
    cpu_seconds: int
    workspace_bytes: int


@dataclass
class _Run:
    task_id: str
    action_id: str
    future: asyncio.Future[pb.ActionResult]
    attempt: int = 1
    task: asyncio.Task[Any] | None = None
    sinks: list[OutputSink] = field(default_factory=list)
    # What the action used, once its tree is dead: how a cancelled action is still charged.
    spent: pb.Cost = field(default_factory=pb.Cost)


class Executor:
    def __init__(self, limits: ExecutorLimits, instance: str) -> None:
        if limits.isolation_policy not in ("strict", "permissive"):
            raise ValueError(f"isolation_policy: strict or permissive, not {limits.isolation_policy!r}")
        self.limits = limits
        self.python = limits.python or os.environ.get("PYTHON_FOR_ACTIONS", "") or _default_python()
        self.subreaper = proctree.become_subreaper()
        self.cgroups = cgroups.CgroupRoot.probe(instance)
        if self.cgroups is not None:
            leftovers = self.cgroups.reap_leftovers()
            if leftovers:
                log.warning("killed %d action cgroups left by a previous executor", leftovers)
        uid, gid = Sandbox.uid_for(limits.sandbox)
        self.workspaces = Workspaces(limits.workspace_root, instance, uid, gid, want_tmpfs=os.geteuid() == 0)
        leftovers = self.workspaces.reap_leftovers()
        if leftovers:
            log.warning("removed %d workspaces left by a previous executor", leftovers)
        self.sandbox = Sandbox(limits.sandbox, self.python, self.workspaces.base)
        self.prlimit = shutil.which("prlimit")
        self.tools = {"echo", "python", "shell"}
        if _importable(self.python, "pytest"):
            self.tools.add("pytest")
        if _importable(self.python, "bandit"):
            self.tools.add("scan")
        # semgrep joins bandit in `scan` where the toolchain has it (setup-env installs it).
        self.semgrep = Path(self.python).with_name("semgrep").exists()
        self._active = {p.name for p in self.protections() if p.active}
        self._live: dict[tuple[str, int], _Run] = {}
        self._done: collections.OrderedDict[tuple[str, int], pb.ActionResult] = collections.OrderedDict()
        self._done_bytes = 0
        self._roots: set[int] = set()
        self._zombies_seen: set[int] = set()
        self.draining = False
        self.pool = self._start_pool()

    def _start_pool(self) -> warm.WarmPool | None:
        """Warm sandboxes, where actions can have full isolation here (a warm slot has all of it)."""
        if self.limits.warm_sandboxes <= 0 or self.cgroups is None or self.sandbox.bwrap is None:
            return None
        if "full" not in self.isolation_levels():
            return None
        mine = self.limits
        return warm.WarmPool(
            mine.warm_sandboxes,
            self.workspaces,
            self.cgroups,
            self.sandbox,
            cgroups.CgroupLimits(mine.memory_bytes, mine.pids, mine.cpu_millicores),
            mine.workspace_bytes,
            self._base_env(sandboxed=True, workspace=Path(WORKSPACE)),
        )

    @property
    def containment(self) -> str:
        return "cgroup" if self.cgroups is not None else "process-group"

    def protections(self) -> list[Protection]:
        """Every protection there is, and whether this host gives it (GetCapabilities, health)."""
        controllers = self.cgroups.describe() if self.cgroups is not None else {}
        no_cgroups = "no usable cgroup v2 with cgroup.kill (not root, or no delegation)"
        found = [
            Protection(
                "cgroup-kill",
                self.cgroups is not None,
                f"cgroup v2 {self.cgroups.kill_base}" if self.cgroups is not None else no_cgroups,
            ),
            *(
                Protection(
                    f"{name}-limit", name in controllers, controllers.get(name, f"no {name} controller")
                )
                for name in cgroups.LIMIT_CONTROLLERS
            ),
            Protection(
                "rlimits",
                self.prlimit is not None,
                "prlimit: cpu, fsize, nofile, as, core=0" if self.prlimit else "util-linux prlimit missing",
            ),
            Protection(
                "subreaper",
                self.subreaper,
                "orphans come back to the executor" if self.subreaper else "orphans re-parent to init",
            ),
            Protection(
                "tmpfs-workspace",
                self.workspaces.tmpfs,
                "size-capped tmpfs per action" if self.workspaces.tmpfs else "plain directory (needs root)",
            ),
            *self.sandbox.protections(),
        ]
        return found

    def isolation_levels(self) -> list[str]:
        return [level for level in LEVELS if not self.sandbox.missing(level, False, self._active)]

    def capabilities(self) -> dict[str, Any]:
        protections = self.protections()
        notes = [f"{p.name}: {p.detail}" for p in protections if not p.active]
        if self.limits.isolation_policy != "strict" and notes:
            notes.append("isolation policy is permissive: actions run with what this host gives")
        return {
            "tools": sorted(self.tools),
            "tool_specs": tools.specs(self.tools),
            "containment": self.containment,
            "network_isolation": "network-namespace" in self._active,
            "notes": notes,
            "protections": [{"name": p.name, "active": p.active, "detail": p.detail} for p in protections],
            "isolation_levels": self.isolation_levels(),
            "warm_sandboxes": self.pool.size if self.pool is not None else 0,
        }

    async def run(
        self,
        task_id: str,
        action_id: str,
        attempt: int,
        action: pb.ExecAction,
        timeout_s: float,
        sink: OutputSink,
        only_if_known: bool = False,
        spent: pb.Cost | None = None,
    ) -> pb.ActionResult:
        """Run the action (or join its live run, or return its remembered result). When it is
        cancelled, `spent` (if given) is filled with what it used until its tree died."""
        key = (action_id, attempt)
        done = self._done.get(key)
        if done is not None:
            return done
        if only_if_known and key not in self._live:
            return pb.ActionResult(
                action_id=action_id,
                status=pb.ACTION_STATUS_FAILED,
                error=pb.TaskError(reason="UNKNOWN_ACTION", message="this executor neither runs nor ran it"),
            )
        live = self._live.get(key)
        while live is not None:
            live.sinks.append(sink)
            try:
                return await asyncio.shield(live.future)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # we are the ones being cancelled
            # The run we joined was cancelled because its caller went away (a coordinator that
            # died and came back re-sends its actions): its tree is dead, so run it anew.
            live = self._live.get(key)
        run = _Run(
            task_id, action_id, asyncio.get_running_loop().create_future(), attempt=attempt, sinks=[sink]
        )
        self._live[key] = run
        run.task = asyncio.current_task()
        began = time.monotonic()
        try:
            result = await self._execute(run, action, timeout_s or self.limits.default_timeout_s)
        except AgentMeshError as exc:
            result = pb.ActionResult(
                action_id=action_id,
                status=pb.ACTION_STATUS_FAILED,
                error=pb.TaskError(reason=exc.reason, message=exc.message),
            )
            if isinstance(exc, InvalidArgument | FailedPrecondition):
                run.future.set_result(result)
                raise
        except BaseException as exc:
            if spent is not None:
                spent.CopyFrom(run.spent)
                if not spent.wall_ms:  # cancelled before its process started
                    spent.wall_ms = (time.monotonic() - began) * 1000
            run.future.set_exception(
                exc if not isinstance(exc, asyncio.CancelledError) else asyncio.CancelledError()
            )
            run.future.exception()  # mark retrieved
            raise
        finally:
            self._live.pop(key, None)
        run.future.set_result(result)
        self._remember(key, result)
        return result

    def _remember(self, key: tuple[str, int], result: pb.ActionResult) -> None:
        size = result.ByteSize()
        if size > DONE_CACHE_BYTES // 16:
            return  # too big to keep; a repeat runs again (at-least-once)
        self._done[key] = result
        self._done_bytes += size
        while len(self._done) > DONE_CACHE_ENTRIES or self._done_bytes > DONE_CACHE_BYTES:
            _, old = self._done.popitem(last=False)
            self._done_bytes -= old.ByteSize()

    def cancel_task(self, task_id: str) -> int:
        """Cancel every live action of a task (the bus's `cancel.<id>`). Returns how many."""
        runs = [r for r in self._live.values() if r.task_id == task_id]
        for run in runs:
            # Once is enough: the session's own cancel for the same action may have come first, and
            # a second cancel would cut short the first one's clean-up.
            if run.task is not None and not run.task.cancelling():
                run.task.cancel()
        return len(runs)

    def cancel_all(self) -> None:
        """Shutdown: stop every live action; their results say EXECUTOR_SHUTDOWN so the coordinator
        runs them again (elsewhere, or here after the restart) without spending an attempt."""
        self.draining = True
        for run in list(self._live.values()):
            if run.task is not None:
                run.task.cancel()

    async def _execute(self, run: _Run, action: pb.ExecAction, timeout_s: float) -> pb.ActionResult:
        started = time.monotonic()
        args = _args(action.args_json)
        if action.tool == "echo":
            return pb.ActionResult(
                action_id=run.action_id,
                status=pb.ACTION_STATUS_OK,
                output_json=action.args_json or "{}",
                cost=pb.Cost(wall_ms=(time.monotonic() - started) * 1000),
            )
        level = action.isolation or "full"
        if level not in LEVELS:
            raise InvalidArgument(f"unknown isolation {level!r} (one of: {', '.join(LEVELS)})")
        command = tools.command_for(action.tool, args, self.python, self.tools, semgrep=self.semgrep)
        check_names(list(action.files), "workspace file")
        check_names(list(action.output_files), "output file")
        self._check_isolation(level, action.network)
        limits = self._limits_for(action.limits, timeout_s)
        files = {**action.files, **command.files}
        slot = self._take_warm(level, action.network, limits)
        if slot is not None:
            result = await self._run_warm(run, slot, command, files, timeout_s, started, action, limits)
            if result is not None:
                return result
        workspace: Path | None = None
        tree: cgroups.CgroupTree | proctree.GroupTree | None = None
        seccomp_fd: int | None = None
        # The attempt is part of the name: two live attempts of one action never share a tree.
        mark = f"{run.action_id}#{run.attempt}#{os.getpid()}"
        try:
            workspace = self.workspaces.make(mark, limits.workspace_bytes, files)
            if self.cgroups is not None:
                tree = self.cgroups.new(
                    mark, cgroups.CgroupLimits(limits.memory_bytes, limits.pids, limits.cpu_millicores)
                )
            else:
                tree = proctree.GroupTree(mark)
            sandboxed = level == "full" and self.sandbox.bwrap is not None
            if sandboxed and self.sandbox.seccomp_program is not None:
                seccomp_fd = seccomp.program_fd(self.sandbox.seccomp_program)
            rlimits = [] if self.prlimit is None else self._rlimits(limits).prlimit_argv(self.prlimit)
            prefix = [*rlimits, *self.sandbox.argv(level, action.network, workspace, seccomp_fd)]
            fds = () if seccomp_fd is None else (seccomp_fd,)
            env = {**self._base_env(sandboxed, workspace), **self._action_env(run, tree)}
            proc = await asyncio.create_subprocess_exec(
                *tree.wrap([*prefix, *command.argv]),
                cwd=workspace,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                pass_fds=fds,
            )
            if isinstance(tree, proctree.GroupTree):
                tree.root_pid = proc.pid
            return await self._supervise(
                run, tree, proc, workspace, timeout_s, command, started, action, limits
            )
        except OSError as exc:
            # The workspace or the tree could not be made (disk full, a file name clash): the action
            # fails, clearly, and the executor goes on.
            raise _workspace_error(exc) from exc
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)
            if tree is not None:
                tree.remove()
            if workspace is not None:
                self.workspaces.remove(workspace)

    def _check_isolation(self, level: str, network: bool) -> None:
        missing = self.sandbox.missing(level, network, self._active)
        if not missing:
            return
        if self.limits.isolation_policy == "strict":
            details = {p.name: p.detail for p in self.protections()}
            raise FailedPrecondition(
                f"this action requires {level} isolation{'' if network else ' without network'}, and "
                "this host cannot give: "
                + "; ".join(f"{name} ({details.get(name, 'unavailable')})" for name in missing)
                + ". Set AGENTMESH_ISOLATION_POLICY=permissive to run such actions anyway.",
                reason="ISOLATION_UNAVAILABLE",
            )
        log.debug("running a %s action without %s (permissive policy)", level, ", ".join(missing))

    def _limits_for(self, asked: pb.ResourceLimits, timeout_s: float) -> _Limits:
        """The executor's limits, lowered where the action asks for less."""
        mine = self.limits

        def lower(value: int, cap: int) -> int:
            return min(value, cap) if value and cap else (value or cap)

        return _Limits(
            memory_bytes=lower(asked.memory_bytes, mine.memory_bytes),
            pids=lower(asked.pids, mine.pids),
            cpu_millicores=lower(asked.cpu_millicores, mine.cpu_millicores),
            # CPU seconds of one process: at most the wall limit (more cannot be honest work).
            cpu_seconds=lower(asked.cpu_seconds, max(1, math.ceil(timeout_s))),
            workspace_bytes=lower(asked.workspace_bytes, mine.workspace_bytes),
        )

    def _rlimits(self, limits: _Limits) -> warm.Rlimits:
        """CPU seconds, file size, open files, address space (and no core dumps); inherited by
        everything the action starts."""
        mine = self.limits
        return warm.Rlimits(
            limits.cpu_seconds, mine.max_file_bytes, mine.max_open_files, mine.max_address_space
        )

    def _base_env(self, sandboxed: bool, workspace: Path) -> dict[str, str]:
        """The environment every action gets: nothing of the executor's own."""
        env = {
            "PATH": f"{os.path.dirname(self.python)}:/usr/local/bin:/usr/bin:/bin",
            "HOME": WORKSPACE if sandboxed else str(workspace),
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        shared = self.sandbox.shared_path("full" if sandboxed else "contained")
        if shared:
            env["AGENTMESH_SHARED_DIR"] = shared
        return env

    @staticmethod
    def _action_env(run: _Run, tree: Any) -> dict[str, str]:
        return {
            proctree.MARKER_ENV: tree_mark(tree, run),
            # Tools may behave differently on a retry (resume partial work, say so in their output).
            "AGENTMESH_ATTEMPT": str(run.attempt),
            "AGENTMESH_TASK_ID": run.task_id,
            "AGENTMESH_ACTION_ID": run.action_id,
        }

    def _take_warm(self, level: str, network: bool, limits: _Limits) -> warm.WarmSlot | None:
        """A warm slot, when this action is what they are made for: full isolation, no network, the
        default workspace size (a tmpfs's size is fixed when it is mounted)."""
        if self.pool is None or level != "full" or network:
            return None
        if limits.workspace_bytes != self.limits.workspace_bytes:
            return None
        return self.pool.take()

    async def _run_warm(
        self,
        run: _Run,
        slot: warm.WarmSlot,
        command: tools.Command,
        files: dict[str, bytes],
        timeout_s: float,
        started: float,
        action: pb.ExecAction,
        limits: _Limits,
    ) -> pb.ActionResult | None:
        """The action in a warm slot; None when the slot turned out unusable (its shell died, a
        limit could not be lowered), and the caller starts the action cold instead."""
        proc = warm.WarmProcess(slot)
        # Ours from the take on, not an orphan for reap_orphans (_supervise adds it again, harmlessly).
        self._roots.add(proc.pid)
        try:
            env = self._action_env(run, slot.tree)
            if not warm.can_launch(command.argv, env):
                return None
            try:
                self.workspaces.fill(slot.workspace, files)
            except OSError as exc:
                # The action's own files do not fit or clash (a file where a directory must go):
                # a cold start would fail the same way.
                raise _workspace_error(exc) from exc
            try:
                slot.tree.apply(cgroups.CgroupLimits(limits.memory_bytes, limits.pids, limits.cpu_millicores))
                slot.tree.restart_accounting()
                await proc.start(warm.launch_script(command.argv, env, self._rlimits(limits)))
            except OSError as exc:
                log.warning("warm sandbox %s unusable (%s): starting this action cold", slot.name, exc)
                return None
            return await self._supervise(
                run, slot.tree, proc, slot.workspace, timeout_s, command, started, action, limits
            )
        finally:
            proc.close()
            self._roots.discard(proc.pid)
            warm.discard(slot, self.workspaces)
            if self.pool is not None:
                self.pool.returned()

    async def _supervise(
        self,
        run: _Run,
        tree: Any,
        proc: Any,
        workspace: Path,
        timeout_s: float,
        command: tools.Command,
        started: float,
        action: pb.ExecAction,
        limits: _Limits,
    ) -> pb.ActionResult:
        """Stream a started action's output, wait for it within its time, kill its whole tree, and
        make its result. `proc` is asyncio's Process or a WarmProcess."""
        usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._roots.add(proc.pid)
        budget = [self.limits.max_output_bytes]
        buffers: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        truncated = [False]

        async def pump(stream: asyncio.StreamReader, name: str) -> None:
            while True:
                chunk = await _read_coalesced(stream)
                if not chunk:
                    return
                room = budget[0]
                if room <= 0:
                    truncated[0] = True
                    continue  # keep draining so the process never blocks on a full pipe
                kept = chunk[:room]
                budget[0] -= len(kept)
                if len(kept) < len(chunk):
                    truncated[0] = True
                buffers[name] += kept
                for sink in run.sinks:
                    sink(name, kept)

        readers = [
            asyncio.ensure_future(pump(proc.stdout, "stdout")),  # type: ignore[arg-type]
            asyncio.ensure_future(pump(proc.stderr, "stderr")),
        ]  # type: ignore[arg-type]
        status, error = pb.ACTION_STATUS_OK, None
        try:
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                status = pb.ACTION_STATUS_TIMED_OUT
                error = pb.TaskError(reason="TIMED_OUT", message=f"killed after {timeout_s:g}s wall time")
        finally:
            # The root exited, timed out, or we are being cancelled: nothing of the tree may outlive it.
            tree.kill(root_pid=proc.pid)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(asyncio.CancelledError, ProcessLookupError):
                    await asyncio.shield(proc.wait())
            self._roots.discard(proc.pid)
            # Measured here, the tree dead, before anything else is awaited: a cancelled action
            # reports what it used too (see `run`), even if a second cancel comes in below.
            usage = tree.usage() if isinstance(tree, cgroups.CgroupTree) else cgroups.CgroupUsage()
            run.spent = _spent(usage, usage_before, started)
            try:
                # Pipes reach EOF once every holder is dead; bounded anyway.
                await asyncio.wait(readers, timeout=2.0)
            finally:
                for reader in readers:
                    reader.cancel()
        exit_code = proc.returncode if proc.returncode is not None else -9
        if status == pb.ACTION_STATUS_OK and exit_code != 0:
            status = pb.ACTION_STATUS_FAILED
            error = _exit_error(exit_code, usage, limits_cpu_s=limits.cpu_seconds)
        output_json = ""
        with contextlib.suppress(Exception):  # a report the action mangled is no report
            output_json = tools.parse_output(
                command.parse, lambda name: read_inside(workspace, name, REPORT_CAP)
            )
        artifacts = {}
        for name in action.output_files:
            data = read_inside(workspace, name, self.limits.max_artifact_bytes)
            if data is not None:
                artifacts[name] = data
        return pb.ActionResult(
            action_id=run.action_id,
            status=status,
            exit_code=exit_code,
            stdout=buffers["stdout"].decode(errors="replace"),
            stderr=buffers["stderr"].decode(errors="replace"),
            output_json=output_json,
            error=error,
            truncated=truncated[0],
            artifacts=artifacts,
            cost=pb.Cost(
                cpu_ms=run.spent.cpu_ms,
                wall_ms=(time.monotonic() - started) * 1000,
                peak_memory_bytes=run.spent.peak_memory_bytes,
            ),
        )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        if self.cgroups is not None:
            self.cgroups.remove()
        self.workspaces.close()

    def reap_orphans(self) -> int:
        """Reap re-parented orphans. Only zombies already seen on the previous sweep: a root that
        exits while `create_subprocess_exec` is still registering it must stay for its watcher."""
        known = self._roots | (self.pool.pids() if self.pool is not None else set())
        reaped, self._zombies_seen = proctree.reap_orphans(known, self._zombies_seen)
        return reaped


def _spent(usage: cgroups.CgroupUsage, rusage_before: Any, started: float) -> pb.Cost:
    """An action's use of CPU, memory and wall time, from its cgroup when it has one."""
    cpu_ms = usage.cpu_ms
    if not cpu_ms:
        # No cgroup to ask: what our reaped children used meanwhile (other actions' included).
        rusage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_ms = (
            (rusage.ru_utime - rusage_before.ru_utime) + (rusage.ru_stime - rusage_before.ru_stime)
        ) * 1000
    return pb.Cost(
        cpu_ms=cpu_ms,
        wall_ms=(time.monotonic() - started) * 1000,
        peak_memory_bytes=usage.peak_memory_bytes,
    )


async def _read_coalesced(stream: asyncio.StreamReader) -> bytes:
    """One chunk of output, gathering what else arrives within COALESCE_S: a process that prints
    line by line becomes a few events, not one per write."""
    chunk = await stream.read(READ_CHUNK)
    if not chunk:
        return chunk
    deadline = time.monotonic() + COALESCE_S
    parts = [chunk]
    size = len(chunk)
    while size < READ_CHUNK:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            more = await asyncio.wait_for(stream.read(READ_CHUNK - size), remaining)
        except TimeoutError:
            break
        if not more:
            break
        parts.append(more)
        size += len(more)
    return b"".join(parts)


def _exit_error(exit_code: int, usage: cgroups.CgroupUsage, limits_cpu_s: int) -> pb.TaskError:
    """Why a process failed, naming the limit it hit where we know. A signal shows as -N from a
    direct child and as 128+N through a shell or bubblewrap."""
    signum = -exit_code if exit_code < 0 else exit_code - 128 if exit_code > 128 else 0
    if usage.oom_killed:
        return pb.TaskError(
            reason="MEMORY_LIMIT", message=f"killed: over its memory limit (exit status {exit_code})"
        )
    if signum == signal.SIGXCPU or (signum == signal.SIGKILL and usage.cpu_ms >= limits_cpu_s * 1000):
        return pb.TaskError(
            reason="CPU_LIMIT", message=f"killed: used up its {limits_cpu_s} CPU seconds (RLIMIT_CPU)"
        )
    if signum == signal.SIGXFSZ:
        return pb.TaskError(reason="FILE_SIZE_LIMIT", message="killed: wrote a file over the size limit")
    message = f"exited with status {exit_code}"
    if usage.pids_refused:
        message += " (it hit its process limit: forks were refused)"
    return pb.TaskError(reason="EXIT_NONZERO", message=message)


def _workspace_error(exc: OSError) -> FailedPrecondition:
    return FailedPrecondition(f"cannot prepare the action: {exc}", reason="WORKSPACE_ERROR")


def tree_mark(tree: Any, run: _Run) -> str:
    return getattr(tree, "mark", "") or f"{run.action_id}#{os.getpid()}"


def _args(args_json: str) -> dict[str, Any]:
    if not args_json:
        return {}
    try:
        args = json.loads(args_json)
    except ValueError as exc:
        raise InvalidArgument(f"args is not valid JSON: {exc}") from None
    if not isinstance(args, dict):
        raise InvalidArgument("args must be a JSON object")
    return args


def _default_python() -> str:
    """The sandbox toolchain scripts/setup-env builds (a Python the sandbox's uid can run), else ours."""
    import sys

    toolchain = Path(__file__).resolve().parents[2] / ".venv-actions" / "bin" / "python"
    return str(toolchain) if toolchain.exists() else sys.executable


def _importable(python: str, module: str) -> bool:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return (
            subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=30).returncode
            == 0
        )
    return False
