"""Services that die are started again: the restart policy of `agentmesh up`.

Like systemd's `Restart=always` with a start limit: a service that exits without being asked to is
started again after a backoff that doubles with each crash in a row (0.5 s, 1 s, 2 s ... up to 30 s;
back to 0.5 s once it has stayed up for 30 s). More than `budget` restarts of one service within
`window_s` is a crash loop: the mesh stops rather than spin. Tasks ride through a restart because
everything they need is in the store (the coordinator resumes its tasks; the planner replays from
the journal; the executor's in-flight actions settle by their repeat-safety rules).

`Healer.tick()` is called from the supervising loop; it never sleeps. What it knows of each service is
written to the mesh's status file (`DATA_DIR/mesh.json`) for `agentmesh health` to show.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.runtime.procs import Child, Supervisor

STATUS_FILE = "mesh.json"
RUNNING, STARTING, RESTARTING, CRASH_LOOP = "running", "starting", "restarting", "crash-loop"


class CrashLoop(RuntimeError):
    """A service died more often than the restart budget allows."""


@dataclass(frozen=True)
class RestartPolicy:
    first_delay_s: float = 0.5
    max_delay_s: float = 30.0
    budget: int = 5  # restarts of one service allowed within window_s (0: never restart)
    window_s: float = 120.0
    stable_s: float = 30.0  # up this long, and the next crash waits first_delay_s again

    def delay(self, streak: int) -> float:
        """The wait before restart number `streak` of a run of crashes."""
        return min(self.max_delay_s, self.first_delay_s * 2 ** max(0, streak - 1))


@dataclass
class ServiceStatus:
    """One service as the status file shows it."""

    name: str
    pid: int
    state: str = RUNNING
    restarts: int = 0
    last_exit: str = ""  # "killed by SIGKILL", "exited with 1"
    last_exit_at: float = 0.0  # unix time
    probe: dict[str, str] = field(default_factory=dict)  # how `agentmesh health` checks it


@dataclass
class _Track:
    started: float  # monotonic time of the latest start
    streak: int = 0  # crashes since the last stable run
    restart_at: float = 0.0
    recent: deque[float] = field(default_factory=deque)  # monotonic times of recent restarts


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "gone"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with {returncode}"


class Healer:
    def __init__(
        self,
        sup: Supervisor,
        policy: RestartPolicy,
        status_path: Path,
        *,
        say: Callable[[str], None] = print,
        probes: dict[str, dict[str, str]] | None = None,
        on_restart: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sup, self.policy, self.status_path = sup, policy, status_path
        self.say, self.on_restart, self.clock = say, on_restart, clock
        now = clock()
        self.status = {
            c.name: ServiceStatus(c.name, c.pid, probe=(probes or {}).get(c.name, {})) for c in sup.children
        }
        self._tracks = {c.name: _Track(started=now) for c in sup.children}
        self.write_status()

    def tick(self) -> None:
        """Notice deaths, start what is due, mark what came back. Raises CrashLoop."""
        changed = False
        for child in self.sup.children:
            status, track = self.status[child.name], self._tracks[child.name]
            if status.state in (RUNNING, STARTING) and not child.alive():
                self._died(child, status, track)
                changed = True
            elif status.state == RESTARTING and self.clock() >= track.restart_at:
                child.is_ready = False
                child.start()
                status.state, status.pid, status.restarts = STARTING, child.pid, status.restarts + 1
                track.started = self.clock()
                track.recent.append(track.started)
                self.on_restart()
                changed = True
            elif status.state == STARTING and child.ready():
                child.is_ready = True
                status.state = RUNNING
                self.say(f"{child.name} is back (pid {child.pid}, restart {status.restarts})")
                changed = True
        if changed:
            self.write_status()

    def _died(self, child: Child, status: ServiceStatus, track: _Track) -> None:
        now = self.clock()
        up_s = now - track.started
        status.last_exit = describe_exit(child.proc.returncode if child.proc else None)
        status.last_exit_at = time.time()
        track.streak = 1 if up_s >= self.policy.stable_s else track.streak + 1
        while track.recent and now - track.recent[0] > self.policy.window_s:
            track.recent.popleft()
        tail = child.log_tail(20)
        if len(track.recent) >= self.policy.budget:
            status.state = CRASH_LOOP
            self.write_status()
            raise CrashLoop(
                f"{child.name} {status.last_exit} after {up_s:.1f}s up, with {len(track.recent)} restart(s) "
                f"in the last {self.policy.window_s:g}s: a crash loop, so the mesh stops\n{tail}"
            )
        delay = self.policy.delay(track.streak)
        status.state, track.restart_at = RESTARTING, now + delay
        self.say(
            f"{child.name} {status.last_exit} after {up_s:.1f}s up; starting it again in {delay:.1f}s\n{tail}"
        )

    def stopped(self) -> None:
        for child in self.sup.children:
            status = self.status[child.name]
            if status.state != CRASH_LOOP:  # the one that stopped the mesh stays marked so
                status.state = "stopped"
            status.last_exit = describe_exit(child.proc.returncode if child.proc else None)
        self.write_status()

    def write_status(self) -> None:
        body: dict[str, Any] = {
            "supervisor_pid": os.getpid(),
            "updated_at": time.time(),
            "services": {name: asdict(s) for name, s in self.status.items()},
        }
        partial = self.status_path.with_suffix(".tmp")
        partial.write_text(json.dumps(body, indent=2))
        partial.replace(self.status_path)  # readers never see half a file


def read_status(data_dir: Path) -> dict[str, Any] | None:
    """The status file `agentmesh up` keeps in `data_dir`, or None when there is none."""
    try:
        return json.loads((data_dir / STATUS_FILE).read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None
