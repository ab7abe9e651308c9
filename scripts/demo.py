#!/usr/bin/env python3
"""The demo: bring the mesh up, run the case study through it, show it live, stop cleanly.

1. `codegen` on a few problems from examples/codegen/: the embedded SmolLM2 writes candidate
   solutions (batched together on the inference worker), each is tested in its own sandbox, the
   first to pass wins and the others are cancelled, failures are fed back, the winner is scanned.
   A 135M model fails some problems: the agent then fails cleanly, with every attempt's report.
2. A `pipeline` over a small sales dataset: parallel sandboxed Python steps, a flaky step that
   succeeds on its retry, a model-written headline, and a fan-out of child tasks, one per region.
Everything runs on embedded defaults: no network, no setup beyond scripts/setup-env.
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

# Wide enough for the tables when the output is not a terminal (CI logs, a pipe).
console = Console(width=None if sys.stdout.isatty() else 120)

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
                # Fan-out: one child task per region, each in its own sandbox, joined when all finish.
                "id": "per_region",
                "tool": "spawn",
                "args": {"join": "all", "inputs": [_region_child(dataset, region) for region in REGIONS]},
                "depends_on": ["validate"],
            },
            {
                "id": "summary",
                "tool": "echo",
                "args": {"report": "sales by region, month and product"},
                "depends_on": ["by_region", "by_month", "top_products", "headline", "per_region"],
            },
        ]
    }


REGIONS = ("north", "south", "east", "west")
REGION_TOTAL = """
import csv, json
rows = [r for r in csv.DictReader(open("sales.csv")) if r["region"] == "{region}"]
print(json.dumps({{"{region}": round(sum(int(r["units"]) * float(r["unit_price"]) for r in rows), 2)}}))
"""


def _region_child(dataset: str, region: str) -> dict:
    code = REGION_TOTAL.format(region=region)
    return {
        "steps": [{"id": "total", "tool": "python", "args": {"code": code}, "files": {"sales.csv": dataset}}]
    }


CODEGEN_PROBLEMS = ("is_even", "count_vowels", "factorial", "fizzbuzz")
PHASES = {
    "fan": "candidates writing and testing",
    "gen": "generating",
    "test": "testing",
    "scan": "scanning",
    "fix": "fixing",
    "retest": "re-testing",
}


async def run_codegen(address: str, key: str) -> int:
    """Submit the problems at once and follow them in one live table."""
    from rich.live import Live

    problems = {
        p["name"]: p
        for p in json.loads((ROOT / "examples" / "codegen" / "problems.json").read_text())
        if p["name"] in CODEGEN_PROBLEMS
    }
    status = {name: "queued" for name in problems}
    started = time.monotonic()

    def table() -> Table:
        view = Table(
            "problem", "now", title=f"codegen, {len(problems)} problems ({time.monotonic() - started:.0f}s)"
        )
        for name, what in status.items():
            view.add_row(name, what)
        return view

    async with AgentMeshClient(address, key) as client:

        async def follow(name: str, problem: dict) -> pb.Task:
            spec = {
                "spec": problem["spec"],
                "tests": problem["tests"],
                "entrypoint": problem["entrypoint"],
                "candidates": 3,
                "max_attempts": 2,
                "max_tokens": 256,
            }
            task = await client.submit("codegen", spec, labels={"demo": "codegen", "problem": name})
            async for event in client.watch(task.id):
                data = json.loads(event.data_json or "{}")
                if event.kind == "action.started":
                    phase, _, rest = data.get("key", "").partition(".")
                    status[name] = f"{PHASES.get(phase, phase)} (attempt {rest.split('.')[0]})"
                elif event.kind == "state":
                    status[name] = data.get("state", "").lower()
            return await client.get(task.id)

        with Live(table(), console=console, refresh_per_second=4) as live:
            followers = [asyncio.ensure_future(follow(n, p)) for n, p in problems.items()]
            while not all(f.done() for f in followers):
                live.update(table())
                await asyncio.sleep(0.25)
            live.update(table())
        finals = [f.result() for f in followers]
    console.rule("codegen results")
    summary = Table(
        "problem", "outcome", "attempts", "candidates (last attempt)", "tokens in/out", "cost", "wall"
    )
    for name, task in zip(problems, finals, strict=True):
        result = json.loads(task.result_json or "{}")
        last = result.get("reports", [{}])[-1].get("candidates", []) if result.get("reports") else []
        outcome = (
            "[green]passed[/green]" if result.get("passed") else f"[red]{task.error.reason or 'failed'}[/red]"
        )
        summary.add_row(
            name,
            outcome,
            str(result.get("attempts", 0)),
            ", ".join(c.get("outcome", "?") for c in last),
            f"{task.cost.tokens_in}/{task.cost.tokens_out}",
            f"${task.cost.usd:.6f}",
            f"{task.finished_at - task.created_at:.1f}s",
        )
    console.print(summary)
    solved = sum(1 for t in finals if t.state == pb.TASK_STATE_SUCCEEDED)
    console.print(
        f"solved {solved} of {len(finals)} with the embedded 135M model; every task ended cleanly, "
        "with a report for each attempt"
    )
    # A failed codegen task is the model's limit, not the demo's: only a task that did not end is.
    return 0 if all(t.state in (pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED) for t in finals) else 1


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
        if not output and isinstance(step.get("output"), dict) and "children" in step["output"]:
            output = " ".join(
                c["result"]["steps"]["total"]["stdout"].strip()
                for c in step["output"]["children"]
                if c.get("result")
            )
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
        address = f"127.0.0.1:{ports['coordinator']}"
        console.rule("the sandbox on this host")
        subprocess.run(
            [sys.executable, "-m", "agentmesh", "sandbox", "--executor", f"127.0.0.1:{ports['executor']}"],
            cwd=ROOT,
            env=env,
            check=False,
        )
        console.rule("1. codegen: write, test, fix, scan")
        code = asyncio.run(run_codegen(address, key))
        console.rule("2. pipeline: a sales report with retries, a model, and fan-out")
        code = asyncio.run(run_pipeline(address, key)) or code
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
