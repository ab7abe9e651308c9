#!/usr/bin/env python3
"""The demo: bring the mesh up, run a real data pipeline through it, show it live, stop cleanly.

The pipeline transforms a small sales dataset in parallel sandboxed Python steps; one step fails on
its first attempt (a simulated flaky upstream) and succeeds on the retry; a final step checks the
parallel results agree. Everything runs on embedded defaults: no model, no network, no setup.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentmesh.client import AgentMeshClient  # noqa: E402
from agentmesh.render import print_event  # noqa: E402
from protos.agentmesh.v1 import common_pb2 as pb  # noqa: E402

console = Console()

BY_REGION = """
import csv, json, collections
totals = collections.Counter()
for row in csv.DictReader(open("sales.csv")):
    totals[row["region"]] += int(row["units"]) * float(row["unit_price"])
print(json.dumps({k: round(v, 2) for k, v in sorted(totals.items())}))
"""

BY_MONTH = """
import csv, json, collections
totals = collections.Counter()
for row in csv.DictReader(open("sales.csv")):
    totals[row["date"][:7]] += int(row["units"]) * float(row["unit_price"])
print(json.dumps({k: round(v, 2) for k, v in sorted(totals.items())}))
"""

TOP_PRODUCTS = """
import csv, json, collections, os, sys
# A flaky upstream: the first attempt fails, the retry succeeds (the executor says which attempt this is).
if os.environ.get("AGENTMESH_ATTEMPT") == "1":
    sys.exit("price service timed out (simulated); the step's retry policy will try again")
units = collections.Counter()
for row in csv.DictReader(open("sales.csv")):
    units[row["product"]] += int(row["units"])
print(json.dumps(units.most_common()))
"""

CHECK = """
import csv
rows = list(csv.DictReader(open("sales.csv")))
assert len(rows) == 15 and all(int(r["units"]) > 0 for r in rows), "bad dataset"
print(f"{len(rows)} rows ok")
"""


def pipeline(dataset: str) -> dict:
    files = {"sales.csv": dataset}
    return {
        "steps": [
            {"id": "validate", "tool": "python", "args": {"code": CHECK}, "files": files},
            {
                "id": "by_region",
                "tool": "python",
                "args": {"code": BY_REGION},
                "files": files,
                "depends_on": ["validate"],
            },
            {
                "id": "by_month",
                "tool": "python",
                "args": {"code": BY_MONTH},
                "files": files,
                "depends_on": ["validate"],
            },
            {
                "id": "top_products",
                "tool": "python",
                "args": {"code": TOP_PRODUCTS},
                "files": files,
                "depends_on": ["validate"],
                "retry": {"attempts": 3, "backoff_s": 0.5},
            },
            {
                # The inference worker, on the embedded SmolLM2 (CPU here, CUDA where a GPU works).
                "id": "headline",
                "tool": "infer",
                "args": {
                    "prompt": "Write a one-sentence headline for a quarterly sales report.",
                    "max_tokens": 40,
                },
                "depends_on": ["validate"],
            },
            {
                "id": "summary",
                "tool": "echo",
                "args": {"report": "sales by region, month and product"},
                "depends_on": ["by_region", "by_month", "top_products", "headline"],
            },
        ]
    }


def _port(default: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", default))
            return default
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]


async def run_pipeline(address: str, key: str) -> int:
    dataset = (ROOT / "scripts" / "demo_data" / "sales.csv").read_text()
    async with AgentMeshClient(address, key) as client:
        task = await client.submit("pipeline", pipeline(dataset), labels={"demo": "sales"})
        console.rule(f"task {task.id}: live events")
        async for event in client.watch(task.id):
            print_event(console, event)
        done = await client.get(task.id)
    console.rule("result")
    steps = json.loads(done.result_json)["steps"]
    table = Table("step", "status", "attempts", "cpu ms", "output")
    for name, step in steps.items():
        output = step.get("stdout") or ""
        if not output and isinstance(step.get("output"), dict) and "text" in step["output"]:
            output = step["output"]["text"]  # what the model wrote
        output = (output or json.dumps(step.get("output"))).strip()
        table.add_row(
            name, step["status"], str(step["attempts"]), f"{step['cost']['cpu_ms']:.0f}", output[:70]
        )
    console.print(table)
    console.print(
        f"task [bold]{pb.TaskState.Name(done.state)}[/bold], cost ${done.cost.usd:.8f}, "
        f"{done.cost.cpu_ms:.0f} ms CPU, {done.last_seq} events"
    )
    return 0 if done.state == pb.TASK_STATE_SUCCEEDED else 1


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="agentmesh-demo-"))
    ready = workdir / "ready.json"
    ports = {
        name: _port(p)
        for name, p in (
            ("coordinator", 50051),
            ("planner", 50052),
            ("executor", 50053),
            ("inference", 50054),
            ("gateway", 8080),
            ("pub", 5559),
            ("sub", 5560),
        )
    }
    flags = [
        "--data-dir",
        str(workdir / "data"),
        "--ready-file",
        str(ready),
        "--coordinator-addr",
        f"127.0.0.1:{ports['coordinator']}",
        "--planner-addr",
        f"127.0.0.1:{ports['planner']}",
        "--executor-addr",
        f"127.0.0.1:{ports['executor']}",
        "--inference-addr",
        f"127.0.0.1:{ports['inference']}",
        "--gateway-addr",
        f"127.0.0.1:{ports['gateway']}",
        "--bus-pub-addr",
        f"tcp://127.0.0.1:{ports['pub']}",
        "--bus-sub-addr",
        f"tcp://127.0.0.1:{ports['sub']}",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
    console.rule("agentmesh up")
    up = subprocess.Popen([sys.executable, "-m", "agentmesh", "up", *flags], cwd=ROOT, env=env)
    code = 1
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if up.poll() is not None or time.monotonic() > deadline:
                console.print("[red]the mesh did not come up[/red]")
                return 1
            time.sleep(0.05)
        key = (workdir / "data" / "default.key").read_text().strip()
        code = asyncio.run(run_pipeline(f"127.0.0.1:{ports['coordinator']}", key))
    finally:
        console.rule("stopping the mesh")
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
        try:
            stopped = up.wait(30)
        except subprocess.TimeoutExpired:
            up.kill()
            stopped = up.wait()
        console.print(f"agentmesh up exited with {stopped}")
        shutil.rmtree(workdir, ignore_errors=True)
    return code if stopped == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
