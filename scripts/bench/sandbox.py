#!/usr/bin/env python3
"""Per-action overhead of the sandbox: `/bin/true` and `python -c pass`, as a plain subprocess and
through the executor at each isolation level, in one run, interleaved so that noise hits every
variant alike.

- plain: the tool's own command line as a bare subprocess (what an action costs with no executor).
- contained: the executor with cgroups (kill, memory, pids, cpu), rlimits, a tmpfs workspace, an
  unprivileged uid and a network namespace, but no bubblewrap.
- full: all of that plus bubblewrap (mount, pid, ipc, uts, user, network namespaces) and seccomp, in
  a warm sandbox (started ahead by the executor's pool, as the service does by default).
- full, cold: the same, with the sandbox started by the action itself (no warm pool).

Before each run the benchmark waits until the pool is full again, so that no variant pays for
another's refill; what a refill costs is reported on its own (the CPU a ready slot used starting).

    .venv/bin/python scripts/bench/sandbox.py [--runs 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

from _common import percentile, report

from protos.agentmesh.v1 import common_pb2 as pb
from services.executor.cgroups import CgroupTree
from services.executor.core import Executor, ExecutorLimits
from services.executor.warm import looks_idle

COMMANDS = {
    "/bin/true": ("shell", {"command": "exec /bin/true"}),
    "python -c pass": ("python", {"code": "pass"}),
}


async def plain(argv: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}")


async def through(executor: Executor, tool: str, args: dict[str, Any], level: str) -> None:
    action = pb.ExecAction(tool=tool, args_json=json.dumps(args), isolation=level)
    result = await executor.run("bench", f"a{time.time_ns()}", 1, action, 30, lambda *_: None)
    if result.status != pb.ACTION_STATUS_OK:
        raise RuntimeError(f"{tool} at {level}: {result.error.message} {result.stderr}")


async def pool_full(executor: Executor) -> None:
    """Until every warm slot is made and its shell waits (bounded)."""
    pool, deadline = executor.pool, time.monotonic() + 10
    while pool is not None and time.monotonic() < deadline:
        trees = pool.ready_trees()
        if len(trees) >= pool.size and all(_waiting(tree) for tree in trees):
            return
        await asyncio.sleep(0.002)


def _waiting(tree: CgroupTree) -> bool:
    """The slot's shell is up: bubblewrap outside and inside, and the shell, and nothing else."""
    pids = tree.pids()
    return len(pids) >= 3 and looks_idle(tree.path, pids)


def startup_cpu_ms(executor: Executor) -> list[float]:
    """CPU each ready slot used to start (cgroup usage; nothing of an action's in it yet)."""
    return [tree.usage().cpu_ms for tree in executor.pool.ready_trees()] if executor.pool else []


async def measure(runs: int) -> tuple[list[dict[str, Any]], int, list[float]]:
    executor = Executor(ExecutorLimits(), f"bench-{os.getpid()}")
    cold = Executor(ExecutorLimits(warm_sandboxes=0), f"bench-cold-{os.getpid()}")
    try:
        missing = [lvl for lvl in ("contained", "full") if lvl not in executor.isolation_levels()]
        if missing:
            raise SystemExit(f"this host cannot give {missing} isolation: {executor.capabilities()['notes']}")
        variants: dict[tuple[str, str], Callable[[], Coroutine[Any, Any, None]]] = {}
        for label, (tool, args) in COMMANDS.items():
            argv = (
                ["/bin/sh", "-c", args["command"]]
                if tool == "shell"
                else [executor.python, "-u", "-c", "pass"]
            )
            variants[(label, "plain")] = lambda argv=argv: plain(argv)  # type: ignore[misc]
            for level in ("contained", "full"):
                variants[(label, level)] = lambda t=tool, a=args, lv=level: through(executor, t, a, lv)  # type: ignore[misc]
            variants[(label, "full, cold")] = lambda t=tool, a=args: through(cold, t, a, "full")  # type: ignore[misc]
        timings: dict[tuple[str, str], list[float]] = {key: [] for key in variants}
        for run in variants.values():  # warm caches once
            await run()
        startup: list[float] = []
        for _ in range(runs):
            for key, run in variants.items():
                await pool_full(executor)
                startup += startup_cpu_ms(executor)[:1]
                started = time.perf_counter()
                await run()
                timings[key].append((time.perf_counter() - started) * 1000)
        taken = executor.pool.taken if executor.pool is not None else 0
    finally:
        executor.close()
        cold.close()
    rows = []
    for label in COMMANDS:
        base = percentile(timings[(label, "plain")], 50)
        for level in ("plain", "contained", "full", "full, cold"):
            values = timings[(label, level)]
            p50 = percentile(values, 50)
            rows.append(
                {
                    "command": label,
                    "isolation": level,
                    "p50 ms": p50,
                    "p99 ms": percentile(values, 99),
                    "added p50 ms": p50 - base,
                    "x plain": p50 / base,
                }
            )
    return rows, taken, startup


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    opts = parser.parse_args()
    # The executor service runs on asyncio's own loop (ExecutorService.event_loop); so does this.
    rows, taken, startup = asyncio.run(measure(opts.runs))
    rows.append(
        {
            "command": "(start one warm sandbox)",
            "isolation": "CPU ms, off the action's path",
            "p50 ms": percentile(startup, 50),
            "p99 ms": percentile(startup, 99),
            "added p50 ms": "",
            "x plain": "",
        }
    )
    full_runs = (opts.runs + 1) * len(COMMANDS)
    report(
        "sandbox",
        f"per-action overhead, {opts.runs} runs of each, interleaved;"
        f" {taken} of {full_runs} full-isolation actions found a warm sandbox ready",
        rows,
        {
            "target_full_added_p50_ms_true": 10,
            "target_full_x_plain_python": 1.5,
            "warm_taken": taken,
            "full_runs": full_runs,
        },
    )


if __name__ == "__main__":
    main()
