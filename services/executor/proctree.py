"""Containment of an action's process tree, and killing all of it.

Two mechanisms, picked once at start:
- `cgroup` (cgroups.py): a cgroup v2 directory per action. Every process the action starts stays in
  it whatever it does (setsid, double fork), and `cgroup.kill` kills them all at once.
- `process-group`: the action runs in a new session; killing walks /proc for the session, the
  process group, the descendants of the root, and orphans (re-parented to the executor, which is
  their subreaper) that carry the action's marker in their environment.
The executor is the child subreaper of everything it starts, so orphans come back to it and are
reaped here rather than lingering as zombies.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import time
from pathlib import Path

from services.runtime.procs import pid_alive

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
MARKER_ENV = "AGENTMESH_ACTION_MARK"


def become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except OSError:
        return False


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, pgid, sid) for every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        table[int(entry)] = (int(fields[1]), int(fields[2]), int(fields[3]))
    return table


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


class GroupTree:
    kind = "process-group"

    def __init__(self, mark: str) -> None:
        self.mark = mark
        self.root_pid: int | None = None

    def wrap(self, argv: list[str]) -> list[str]:
        return argv

    def cpu_ms(self) -> float:
        return 0.0

    def _members(self) -> set[int]:
        me = os.getpid()
        table = _proc_table()
        members: set[int] = set()
        root = self.root_pid
        if root is not None:
            members |= {pid for pid, (_, pgid, sid) in table.items() if pgid == root or sid == root}
            frontier = [root]
            while frontier:
                parent = frontier.pop()
                for pid, (ppid, _, _) in table.items():
                    if ppid == parent and pid not in members:
                        members.add(pid)
                        frontier.append(pid)
        marker = f"{MARKER_ENV}={self.mark}".encode()
        members |= {pid for pid, (ppid, _, _) in table.items() if ppid == me and _has_marker(pid, marker)}
        members.discard(me)
        return members

    def kill(self, root_pid: int | None = None, wait_s: float = 1.0) -> list[int]:
        killed: set[int] = set()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            members = self._members() - {p for p in killed if not pid_alive(p)}
            live = {p for p in members if pid_alive(p)}
            if not live:
                break
            for pid in live:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            killed |= live
            reap(list(killed), exclude=root_pid)
            time.sleep(0.001)
        reap(list(killed), exclude=root_pid)
        return sorted(killed)

    def remove(self) -> None:
        return None


def reap(pids: list[int], exclude: int | None = None) -> None:
    """Collect exit statuses of our (re-parented) children among `pids`, except the root, whose
    status belongs to the event loop's child watcher."""
    for pid in pids:
        if pid == exclude:
            continue
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def reap_orphans(known: set[int], seen_before: set[int]) -> tuple[int, set[int]]:
    """Reap zombie children of the executor that it did not start directly (re-parented orphans),
    if they were zombies on the previous sweep too. Returns (reaped, zombies seen now)."""
    me = os.getpid()
    zombies = {
        pid
        for pid, (ppid, _, _) in _proc_table().items()
        if ppid == me and pid not in known and not pid_alive(pid)
    }
    count = 0
    for pid in zombies & seen_before:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
            count += 1
    return count, zombies - seen_before
