"""Shared by the benchmarks: a mesh on free ports, percentiles, RSS, and the table + JSON output.

Every benchmark prints a table and writes `bench-results/<name>.json` with the machine, the command
and the figures. Compare figures as ratios measured in the same run: this machine is shared.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from agentmesh.local import Mesh  # noqa: E402

console = Console()


def start_mesh(store: str = "sqlite", **env: str) -> Mesh:
    """A mesh on this machine; with store="postgres", its tasks in a PostgreSQL server of its own
    (started here on a free loopback port, stopped at exit after the mesh)."""
    root = Path(tempfile.mkdtemp(prefix="agentmesh-bench-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # after the benchmark stopped the mesh
    if store == "postgres":
        env = {**env, "AGENTMESH_STORE_URL": _postgres_database()}
    elif store != "sqlite":
        raise SystemExit(f"--store: sqlite or postgres, not {store!r}")
    mesh = Mesh(root, extra_env=dict(env))
    mesh.start()
    return mesh


def _postgres_database() -> str:
    from agentmesh.local_postgres import PostgresServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("no PostgreSQL server installed (scripts/test installs one)")
    server = PostgresServer(bin_dir)
    atexit.register(server.stop)  # registered before the mesh's own cleanup: runs after it
    server.start()
    return server.new_database()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kb(pid: int) -> int:
    """Proportional set size: shared pages (the Python binary, grpc's and zmq's libraries) divided
    among the processes that map them, so a sum over processes counts each page once."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def report(name: str, title: str, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
    table = Table(title=title)
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(table)
    out_dir = ROOT / "bench-results"
    out_dir.mkdir(exist_ok=True)
    payload = {
        "benchmark": name,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "rows": rows,
        **(extra or {}),
    }
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    console.print(f"wrote {path.relative_to(ROOT)}")


async def submit_many(
    client: Any, agent: str, spec: dict[str, Any], count: int, window: int = 256
) -> list[str]:
    """Submit `count` tasks with `window` submits in flight, waiting out 429s (Retry-After); their ids."""
    import asyncio

    from services.runtime.errors import ResourceExhausted

    ids: list[str] = []
    left = count

    async def submitter() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            while True:
                try:
                    ids.append((await client.submit(agent, spec)).id)
                    break
                except ResourceExhausted as exc:
                    await asyncio.sleep(exc.retry_after_s or 0.1)

    await asyncio.gather(*[submitter() for _ in range(window)])
    return ids
