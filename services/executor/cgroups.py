"""Cgroups for actions: one per action, to kill its whole tree at once and to cap what it uses.

Killing needs cgroup v2 (`cgroup.kill`, in the unified hierarchy, also on hybrid hosts). The memory,
pids and cpu controllers are taken where this host has them: in the v2 tree when they are enabled
there, else in their v1 hierarchies (hybrid hosts bind them to v1: `memory.limit_in_bytes`, `pids.max`,
`cpu.cfs_quota_us`). Each action's cgroups live under `agentmesh/<instance>/` beside the executor's own
cgroup in each hierarchy, so the executor finds and kills what a crashed predecessor left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from services.executor.proctree import reap

log = logging.getLogger(__name__)

LIMIT_CONTROLLERS = ("memory", "pids", "cpu")
# `sh -c JOIN N procs-file... argv...`: write our pid into N cgroup.procs files, then exec argv.
JOIN = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; exec "$@"'
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class CgroupLimits:
    """0 means no limit."""

    memory_bytes: int = 0
    pids: int = 0
    cpu_millicores: int = 0


@dataclass(frozen=True)
class CgroupUsage:
    cpu_ms: float = 0.0
    peak_memory_bytes: int = 0
    oom_killed: bool = False
    pids_refused: bool = False


def _mounts() -> list[tuple[Path, str, set[str]]]:
    """(mount point, fstype, super options) of every cgroup mount."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fstype, _, supers = (right.split(" ") + ["", "", ""])[:3]
            if fstype in ("cgroup", "cgroup2"):
                found.append((Path(left.split()[4]), fstype, set(supers.split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """Our cgroup path per hierarchy: '' for v2, the controller names for v1."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":
                paths[""] = path
            for controller in controllers.split(","):
                paths[controller] = path
    return paths


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:200]


def _base_path(mount: Path, own: str, instance: str, beside: bool) -> Path:
    """`agentmesh/<instance>` under (v1) or beside (v2) our own cgroup in one hierarchy. Beside in v2:
    a cgroup holding processes may not have children with controllers enabled."""
    parent = mount / own.lstrip("/")
    if beside and own not in ("", "/"):
        parent = parent.parent
    return parent / "agentmesh" / _safe(instance)


def kill_base(instance: str) -> Path | None:
    """Where executor `instance` (started beside us, in our cgroup) keeps its actions' v2 cgroups."""
    v2 = next((m for m, kind, _ in _mounts() if kind == "cgroup2"), None)
    return None if v2 is None else _base_path(v2, _own_paths().get("", "/"), instance, beside=True)


def _base_in(mount: Path, own: str, instance: str, beside: bool) -> Path | None:
    """`_base_path`, made, if we may make cgroups there."""
    base = _base_path(mount, own, instance, beside)
    try:
        base.mkdir(parents=True, exist_ok=True)
        probe = base / "probe"
        probe.mkdir(exist_ok=True)
        usable = os.access(probe / "cgroup.procs", os.W_OK)
        probe.rmdir()
    except OSError:
        return None
    return base if usable else None


def _enable_v2_controllers(base: Path, wanted: tuple[str, ...]) -> set[str]:
    """Enable what we can of `wanted` for the children of `base` (each ancestor from the mount's
    root down must delegate it). Returns the controllers enabled."""
    enabled: set[str] = set()
    chain = [base.parent, base]
    for controller in wanted:
        ok = True
        for directory in chain:
            try:
                available = (directory / "cgroup.controllers").read_text().split()
                if controller not in available:
                    ok = False
                    break
                control = directory / "cgroup.subtree_control"
                if controller not in control.read_text().split():
                    control.write_text(f"+{controller}")
            except OSError:
                ok = False
                break
        if ok:
            enabled.add(controller)
    return enabled


class CgroupRoot:
    """The executor's cgroups in every hierarchy it uses: `kill` (v2) plus one per limit controller."""

    def __init__(self, kill_base: Path, controllers: dict[str, tuple[Path, int]]) -> None:
        self.kill_base = kill_base
        # controller -> (base dir in its hierarchy, cgroup version)
        self.controllers = controllers

    @classmethod
    def probe(cls, instance: str) -> CgroupRoot | None:
        mounts = _mounts()
        own = _own_paths()
        v2 = next((m for m, kind, _ in mounts if kind == "cgroup2"), None)
        if v2 is None:
            return None
        kill_base = _base_in(v2, own.get("", "/"), instance, beside=True)
        if kill_base is None or not (kill_base / "cgroup.kill").exists():
            return None
        controllers: dict[str, tuple[Path, int]] = {}
        for controller in _enable_v2_controllers(kill_base, LIMIT_CONTROLLERS):
            controllers[controller] = (kill_base, 2)
        for mount, kind, supers in mounts:
            for controller in LIMIT_CONTROLLERS:
                if kind != "cgroup" or controller not in supers or controller in controllers:
                    continue
                base = _base_in(mount, own.get(controller, "/"), instance, beside=False)
                if base is not None:
                    controllers[controller] = (base, 1)
        return cls(kill_base, controllers)

    def describe(self) -> dict[str, str]:
        """controller -> where it is, for the isolation report."""
        return {name: f"cgroup v{version} {base}" for name, (base, version) in self.controllers.items()}

    def _bases(self) -> list[Path]:
        return [self.kill_base, *(base for base, v in self.controllers.values() if v == 1)]

    def new(self, action_key: str, limits: CgroupLimits) -> CgroupTree:
        name = _safe(action_key)
        kill_dir = self.kill_base / name
        kill_dir.mkdir(exist_ok=True)
        limit_dirs: dict[str, tuple[Path, int]] = {}
        for controller, (base, version) in self.controllers.items():
            directory = kill_dir if version == 2 else base / name
            directory.mkdir(exist_ok=True)
            limit_dirs[controller] = (directory, version)
        tree = CgroupTree(kill_dir, limit_dirs)
        tree.apply(limits)
        return tree

    def reap_leftovers(self) -> int:
        """Kill and remove the cgroups a previous executor left (it crashed). Returns how many."""
        count = 0
        for base in self._bases():
            with contextlib.suppress(OSError):
                for child in base.iterdir():
                    if child.is_dir():
                        tree = CgroupTree(child, {})
                        tree.kill()
                        tree.remove()
                        count += 1
        return count

    def remove(self) -> None:
        """At shutdown: kill what is left (nothing, normally) and remove the executor's subtrees."""
        self.reap_leftovers()
        for base in self._bases():
            with contextlib.suppress(OSError):
                base.rmdir()


class CgroupTree:
    """One action's cgroups: the v2 one it is killed through, and one per v1 limit controller."""

    kind = "cgroup"

    def __init__(self, path: Path, limit_dirs: dict[str, tuple[Path, int]]) -> None:
        self.path = path
        self.limit_dirs = limit_dirs
        # Usage before the action began (a warm sandbox's start-up), left out of its cost.
        self._cpu_base_ms = 0.0
        self._peak_fd: int | None = None

    def _dirs(self) -> list[Path]:
        extra = [d for d, version in self.limit_dirs.values() if version == 1]
        return [self.path, *dict.fromkeys(extra)]

    def apply(self, limits: CgroupLimits) -> None:
        for controller, (directory, version) in self.limit_dirs.items():
            if controller == "memory" and limits.memory_bytes:
                if version == 2:
                    _write(directory / "memory.max", limits.memory_bytes)
                    _write(directory / "memory.swap.max", 0, optional=True)
                else:
                    _write(directory / "memory.limit_in_bytes", limits.memory_bytes)
                    # Swap counts too, or a hog pages out instead of being stopped.
                    _write(directory / "memory.memsw.limit_in_bytes", limits.memory_bytes, optional=True)
            elif controller == "pids" and limits.pids:
                _write(directory / "pids.max", limits.pids)
            elif controller == "cpu" and limits.cpu_millicores:
                quota = limits.cpu_millicores * CPU_PERIOD_US // 1000
                if version == 2:
                    _write(directory / "cpu.max", f"{quota} {CPU_PERIOD_US}")
                else:
                    _write(directory / "cpu.cfs_period_us", CPU_PERIOD_US)
                    _write(directory / "cpu.cfs_quota_us", quota)

    def wrap(self, argv: list[str]) -> list[str]:
        # The shell moves itself into every cgroup of the action before exec'ing the tool, so no
        # process of the action ever runs outside them (no race with an early fork).
        procs = [str(d / "cgroup.procs") for d in self._dirs()]
        return ["/bin/sh", "-c", JOIN, "sh", str(len(procs)), *procs, *argv]

    def pids(self) -> list[int]:
        found: set[int] = set()
        for directory in self._dirs():
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        return sorted(found)

    def restart_accounting(self) -> None:
        """Count CPU and peak memory from now on: a warm sandbox's tree spent some starting up,
        which is not its action's. (A v2 peak resets per descriptor, since Linux 6.12; on older
        kernels it keeps the start-up's, a few MB at most.)"""
        self._cpu_base_ms = self._cpu_ms()
        memory = self.limit_dirs.get("memory")
        if memory is None:
            return
        directory, version = memory
        if version == 1:
            _write(directory / "memory.max_usage_in_bytes", 0, optional=True)
            return
        with contextlib.suppress(OSError):
            fd = os.open(directory / "memory.peak", os.O_RDWR | os.O_CLOEXEC)
            try:
                os.write(fd, b"reset")
            except OSError:
                os.close(fd)
                raise
            self._peak_fd = fd

    def _cpu_ms(self) -> float:
        stats = _keyed(self.path / "cpu.stat")
        return stats["usage_usec"] / 1000.0 if "usage_usec" in stats else 0.0

    def usage(self) -> CgroupUsage:
        cpu_ms = max(0.0, self._cpu_ms() - self._cpu_base_ms)
        peak, oom, refused = 0, False, False
        memory = self.limit_dirs.get("memory")
        if memory is not None:
            directory, version = memory
            if version == 2 and self._peak_fd is not None:
                with contextlib.suppress(OSError, ValueError):
                    peak = int(os.pread(self._peak_fd, 64, 0).split()[0])
            elif version == 2:
                peak = _read_int(directory / "memory.peak")
                oom = _keyed(directory / "memory.events").get("oom_kill", 0) > 0
            else:
                peak = _read_int(directory / "memory.max_usage_in_bytes")
                oom = _keyed(directory / "memory.oom_control").get("oom_kill", 0) > 0
        pids = self.limit_dirs.get("pids")
        if pids is not None:
            refused = _keyed(pids[0] / "pids.events").get("max", 0) > 0
        return CgroupUsage(cpu_ms=cpu_ms, peak_memory_bytes=peak, oom_killed=oom, pids_refused=refused)

    def kill(self, root_pid: int | None = None, wait_s: float = 1.0) -> list[int]:
        victims = self.pids()
        with contextlib.suppress(OSError):
            (self.path / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + wait_s
        while True:
            left = self.pids()
            if not left or time.monotonic() >= deadline:
                break
            # A process still in a v1 cgroup only (it left the v2 one: it cannot, but a crashed
            # predecessor's leftovers may be anywhere) is killed one by one.
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            reap(victims, exclude=root_pid)
            time.sleep(0.001)
        reap(victims, exclude=root_pid)
        return victims

    def remove(self) -> None:
        if self._peak_fd is not None:
            os.close(self._peak_fd)
            self._peak_fd = None
        for directory in reversed(self._dirs()):
            _rmdir(directory)


def _rmdir(path: Path) -> None:
    for _ in range(100):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.002)
    log.warning("could not remove cgroup %s", path)


def _write(path: Path, value: object, optional: bool = False) -> None:
    try:
        path.write_text(str(value))
    except OSError:
        if not optional:
            raise


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _keyed(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file (`name value` per line)."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                values[name] = int(value)
    return values
