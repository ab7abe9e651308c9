"""The executor's core: run one tool action in a fresh workspace and contain its process tree.

Guarantees:
- Each action runs in a new temp workspace holding only its declared files; the workspace is
  removed afterwards.
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
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protos.agentmesh.v1 import common_pb2 as pb
from services.executor import proctree, tools
from services.runtime.errors import AgentMeshError, FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

OutputSink = Callable[[str, bytes], None]
READ_CHUNK = 64 * 1024
COALESCE_S = 0.02
# Finished results kept to answer a repeated (action, attempt) without running it again: bounded in
# count and in bytes (a result may carry up to max_output_bytes of output).
DONE_CACHE_ENTRIES = 10_000
DONE_CACHE_BYTES = 64 << 20


@dataclass(frozen=True)
class ExecutorLimits:
    max_output_bytes: int = 1 << 20
    max_artifact_bytes: int = 1 << 20
    default_timeout_s: float = 600.0
    workspace_root: str = ""
    python: str = ""
    # When the host cannot cut an action off the network: refuse (strict) or run anyway (permissive).
    network_policy: str = "strict"
    # Resource limits of every process of an action (setrlimit through util-linux `prlimit`).
    max_file_bytes: int = 64 << 20
    max_open_files: int = 1024
    max_address_space: int = 8 << 30


@dataclass
class _Run:
    task_id: str
    action_id: str
    future: asyncio.Future[pb.ActionResult]
    attempt: int = 1
    task: asyncio.Task[Any] | None = None
    sinks: list[OutputSink] = field(default_factory=list)


def _check_files(files: dict[str, bytes]) -> None:
    for name in files:
        parts = name.split("/")
        if not name or name.startswith("/") or "\x00" in name or any(p in ("", ".", "..") for p in parts):
            raise InvalidArgument(
                f"unsafe workspace file name {name!r}: relative paths without '..' only", reason="UNSAFE_PATH"
            )


def _probe_netns() -> list[str] | None:
    """The unshare prefix that gives a process an empty network namespace here, if any."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for prefix in ([unshare, "--net", "--"], [unshare, "--user", "--map-root-user", "--net", "--"]):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=5).returncode == 0:
                return prefix
    return None


class Executor:
    def __init__(self, limits: ExecutorLimits, instance: str) -> None:
        self.limits = limits
        self.python = limits.python or os.environ.get("PYTHON_FOR_ACTIONS", "") or _default_python()
        self.subreaper = proctree.become_subreaper()
        self.cgroups = proctree.CgroupRoot.probe(instance)
        if self.cgroups is not None:
            leftovers = self.cgroups.reap_leftovers()
            if leftovers:
                log.warning("killed %d action cgroups left by a previous executor", leftovers)
        self.netns = _probe_netns()
        self.prlimit = shutil.which("prlimit")
        self.tools = {"echo", "python", "shell"}
        if _importable(self.python, "pytest"):
            self.tools.add("pytest")
        if _importable(self.python, "bandit"):
            self.tools.add("scan")
        self._live: dict[tuple[str, int], _Run] = {}
        self._done: collections.OrderedDict[tuple[str, int], pb.ActionResult] = collections.OrderedDict()
        self._done_bytes = 0
        self._roots: set[int] = set()
        self._zombies_seen: set[int] = set()
        self.draining = False

    @property
    def containment(self) -> str:
        return "cgroup" if self.cgroups is not None else "process-group"

    def capabilities(self) -> dict[str, Any]:
        notes = []
        if not self.subreaper:
            notes.append("not a child subreaper: orphans of an action re-parent to init")
        if self.netns is None:
            notes.append(
                "no network namespaces: network-off actions are "
                + ("refused" if self.limits.network_policy == "strict" else "run with network")
            )
        if self.prlimit is None:
            notes.append("no prlimit: actions run without rlimits")
        notes.append("filesystem isolation, an unprivileged uid and seccomp: not yet (the hardened sandbox)")
        return {
            "tools": sorted(self.tools),
            "containment": self.containment,
            "network_isolation": self.netns is not None,
            "notes": notes,
        }

    async def run(
        self,
        task_id: str,
        action_id: str,
        attempt: int,
        action: pb.ExecAction,
        timeout_s: float,
        sink: OutputSink,
    ) -> pb.ActionResult:
        key = (action_id, attempt)
        done = self._done.get(key)
        if done is not None:
            return done
        live = self._live.get(key)
        if live is not None:
            return await asyncio.shield(live.future)
        run = _Run(
            task_id, action_id, asyncio.get_running_loop().create_future(), attempt=attempt, sinks=[sink]
        )
        self._live[key] = run
        run.task = asyncio.current_task()
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
            if run.task is not None:
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
        command = tools.command_for(action.tool, args, self.python, self.tools)
        _check_files(dict(action.files))
        prefix: list[str] = []
        if not action.network:
            if self.netns is not None:
                prefix = self.netns
            elif self.limits.network_policy == "strict":
                raise FailedPrecondition(
                    "this action must run without network, and this host cannot cut it off "
                    "(no network namespaces); set AGENTMESH_NETWORK_POLICY=permissive to allow",
                    reason="ISOLATION_UNAVAILABLE",
                )
        prefix = prefix + self._rlimits(timeout_s)
        workspace: Path | None = None
        tree: proctree.CgroupTree | proctree.GroupTree | None = None
        # The attempt is part of the name: two live attempts of one action never share a tree.
        mark = f"{run.action_id}#{run.attempt}#{os.getpid()}"
        try:
            workspace = Path(tempfile.mkdtemp(prefix="agentmesh-ws-", dir=self.limits.workspace_root or None))
            tree = self.cgroups.new(mark) if self.cgroups is not None else proctree.GroupTree(mark)
            for name, content in action.files.items():
                target = workspace / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            return await self._spawn(
                run, tree, [*prefix, *command.argv], workspace, timeout_s, command, started, action
            )
        except OSError as exc:
            # The workspace or the tree could not be made (disk full, a file name clash): the action
            # fails, clearly, and the executor goes on.
            raise FailedPrecondition(f"cannot prepare the action: {exc}", reason="WORKSPACE_ERROR") from exc
        finally:
            if tree is not None:
                tree.remove()
            if workspace is not None:
                shutil.rmtree(workspace, ignore_errors=True)

    def _rlimits(self, timeout_s: float) -> list[str]:
        """CPU seconds (the wall limit: more cannot be honest work for one process), file size, open
        files, address space, no core dumps; inherited by everything the action starts."""
        if self.prlimit is None:
            return []
        limits = self.limits
        return [
            self.prlimit,
            f"--cpu={max(1, math.ceil(timeout_s))}",
            f"--fsize={limits.max_file_bytes}",
            f"--nofile={limits.max_open_files}",
            f"--as={limits.max_address_space}",
            "--core=0",
            "--",
        ]

    async def _spawn(
        self,
        run: _Run,
        tree: Any,
        argv: list[str],
        workspace: Path,
        timeout_s: float,
        command: tools.Command,
        started: float,
        action: pb.ExecAction,
    ) -> pb.ActionResult:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(workspace),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            proctree.MARKER_ENV: tree_mark(tree, run),
            # Tools may behave differently on a retry (resume partial work, say so in their output).
            "AGENTMESH_ATTEMPT": str(run.attempt),
            "AGENTMESH_TASK_ID": run.task_id,
            "AGENTMESH_ACTION_ID": run.action_id,
        }
        usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = await asyncio.create_subprocess_exec(
            *tree.wrap(argv),
            cwd=workspace,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        if isinstance(tree, proctree.GroupTree):
            tree.root_pid = proc.pid
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
            # Pipes reach EOF once every holder is dead; bounded anyway.
            _, still = await asyncio.wait(readers, timeout=2.0)
            for reader in still:
                reader.cancel()
        exit_code = proc.returncode if proc.returncode is not None else -9
        if status == pb.ACTION_STATUS_OK and exit_code != 0:
            status = pb.ACTION_STATUS_FAILED
            error = pb.TaskError(reason="EXIT_NONZERO", message=f"exited with status {exit_code}")
        cpu_ms = tree.cpu_ms()
        if not cpu_ms:
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_ms = (
                (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
            ) * 1000
        output_json = ""
        with contextlib.suppress(Exception):
            output_json = tools.parse_output(command.parse, workspace)
        artifacts = {}
        for name in action.output_files:
            path = workspace / name
            if path.is_file() and path.stat().st_size <= self.limits.max_artifact_bytes:
                artifacts[name] = path.read_bytes()
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
            cost=pb.Cost(cpu_ms=cpu_ms, wall_ms=(time.monotonic() - started) * 1000),
        )

    def close(self) -> None:
        if self.cgroups is not None:
            self.cgroups.remove()

    def reap_orphans(self) -> int:
        """Reap re-parented orphans. Only zombies already seen on the previous sweep: a root that
        exits while `create_subprocess_exec` is still registering it must stay for its watcher."""
        reaped, self._zombies_seen = proctree.reap_orphans(self._roots, self._zombies_seen)
        return reaped


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
    import sys

    return sys.executable


def _importable(python: str, module: str) -> bool:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return (
            subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=30).returncode
            == 0
        )
    return False
