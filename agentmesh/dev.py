"""`agentmesh dev --agents FILE.py`: the mesh, with your agents served by a worker process that is
replaced when their files change.

On a change a new agent worker starts with the new code. Once it is registered, each older worker
whose agent versions the new one all serves is stopped (it leaves, then ends the decisions in
flight); an older worker that serves a version the new one does not (the version was bumped) keeps
running, so tasks pinned to that version finish on the code they started on. New tasks take the
newest version. Code that fails to load leaves the running workers as they are.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from services.runtime.procs import Child, free_port, grpc_ready

# How often the files are looked at, and how long they must stay unchanged before a reload (an
# editor saving in several writes is one change).
POLL_S = 0.3
SETTLE_S = 0.3
WORKER_READY_S = 60.0


class Reloader:
    def __init__(
        self,
        spec: str,
        env: dict[str, str],
        logs: Path,
        say: Callable[[str], None],
        on_change: Callable[[dict[str, int]], None] | None = None,
    ) -> None:
        self.spec = spec
        self.env = {**env, "AGENTMESH_AGENTS": spec}
        self.env.setdefault("AGENTMESH_STRICT", "true")  # catch what replay cannot survive, early
        self.logs = logs
        self.say = say
        self.on_change = on_change
        self.workers: list[Child] = []
        self._addresses: dict[str, str] = {}
        self._started = 0
        self._seen = self._mtimes()
        self._changed_at = 0.0

    # ------------------------------------------------------------------ files

    def _files(self) -> list[Path]:
        """Every .py file beside the agent files and under the agent packages: a helper module the
        agents import counts as their code too."""
        roots: list[Path] = []
        for entry in (e.strip() for e in self.spec.split(",") if e.strip()):
            path = Path(entry)
            if path.suffix == ".py" or path.is_file():
                roots.append(path.resolve().parent)
            else:
                found = _module_dir(entry)
                if found is not None:
                    roots.append(found)
        files: set[Path] = set()
        for root in roots:
            files.update(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
        return sorted(files)

    def _mtimes(self) -> dict[Path, float]:
        stamps = {}
        for path in self._files():
            try:
                stamps[path] = path.stat().st_mtime_ns
            except OSError:
                continue
        return stamps

    # ------------------------------------------------------------------ workers

    def start(self) -> bool:
        """Start a worker with the code as it is now; stop the older ones it replaces. False if
        the code did not load (the older workers go on)."""
        self._started += 1
        name = f"dev-{self._started}"
        addr = f"127.0.0.1:{free_port()}"
        argv = [sys.executable, "-m", "agentmesh", "worker", "--listen", addr, "--worker-id", name]
        child = Child(name, argv, grpc_ready(addr), env=dict(self.env), log_path=self.logs / f"{name}.log")
        child.start()
        deadline = time.monotonic() + WORKER_READY_S
        while not child.ready():
            if not child.alive() or time.monotonic() > deadline:
                _stop(child)
                self.say(f"[red]{name} did not start[/red]; the running workers go on:\n{child.log_tail(15)}")
                return False
            time.sleep(0.05)
        child.is_ready = True
        self._addresses[name] = addr
        mine = asyncio.run(_served(addr))
        self.say(f"{name} (pid {child.pid}) serves {_pairs(mine)}")
        for old in list(self.workers):
            kept = asyncio.run(_served(self._addresses[old.name])) - mine
            if kept:
                self.say(f"{old.name} goes on serving {_pairs(kept)} for the tasks pinned to it")
                continue
            _stop(old)
            self.workers.remove(old)
            self.say(f"{old.name} replaced")
        self.workers.append(child)
        if self.on_change is not None:
            self.on_change({c.name: c.pid for c in self.workers})
        return True

    def tick(self) -> None:
        """Reload if the agents' files changed (and have settled)."""
        now = self._mtimes()
        if now != self._seen:
            self._seen, self._changed_at = now, time.monotonic()
            return
        if self._changed_at and time.monotonic() - self._changed_at >= SETTLE_S:
            self._changed_at = 0.0
            self.say("agent code changed: starting a worker with it")
            self.start()

    def dead(self) -> list[Child]:
        gone = [c for c in self.workers if not c.alive()]
        for child in gone:
            self.workers.remove(child)
        return gone

    def stop(self) -> None:
        for child in self.workers:
            _stop(child)
        self.workers.clear()


async def _served(address: str) -> set[tuple[str, str]]:
    """The (agent, version) pairs the worker at `address` serves, as it tells the coordinator."""
    import grpc

    from protos.agentmesh.v1 import agent_service_pb2, planner_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await planner_pb2_grpc.PlannerStub(channel).ListAgents(
                agent_service_pb2.ListAgentsRequest(), timeout=10
            )
        except grpc.RpcError:
            return set()  # gone: it serves nothing that would keep it
    return {(a.name, a.version) for a in reply.agents}


def _pairs(pairs: set[tuple[str, str]]) -> str:
    return ", ".join(sorted(f"{a} v{v}" if v else a for a, v in pairs)) or "nothing"


def _stop(child: Child, grace_s: float = 10.0) -> None:
    if child.proc is None or child.proc.poll() is not None:
        return
    child.proc.send_signal(signal.SIGTERM)
    try:
        child.proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        child.proc.kill()
        child.proc.wait()


def _module_dir(name: str) -> Path | None:
    """The folder of a module path's top package, found without importing the agents."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name.split(".")[0])
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    origin = Path(spec.origin)
    return origin.parent

