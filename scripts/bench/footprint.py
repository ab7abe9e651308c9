#!/usr/bin/env python3
"""Footprint: RSS of the idle mesh (six processes; no model is loaded), and `agentmesh up` until
every service answers SERVING.

    .venv/bin/python scripts/bench/footprint.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, report, rss_kb

from services.runtime.procs import free_port


def one_run() -> tuple[float, dict[str, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready.json"
        flags = ["--data-dir", f"{tmp}/data", "--ready-file", str(ready)]
        for name in ("coordinator", "planner", "executor", "inference", "gateway"):
            flags += [f"--{name}-addr", f"127.0.0.1:{free_port()}"]
        flags += [
            "--bus-pub-addr",
            f"tcp://127.0.0.1:{free_port()}",
            "--bus-sub-addr",
            f"tcp://127.0.0.1:{free_port()}",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
        up = subprocess.Popen(
            [sys.executable, "-m", "agentmesh", "up", *flags],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not ready.exists():
                if up.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the mesh did not come up")
                time.sleep(0.02)
            info = json.loads(ready.read_text())
            time.sleep(2.0)  # idle
            rss = {name: rss_kb(pid) for name, pid in info["pids"].items()}
            rss["agentmesh up (supervisor)"] = rss_kb(up.pid)
            return info["ready_s"], rss
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    opts = parser.parse_args()
    ready_times, last = [], {}
    for _ in range(opts.runs):
        ready_s, last = one_run()
        ready_times.append(ready_s)
    total = sum(last.values()) / 1024
    rows = [{"measure": f"RSS of {name}", "value": kb / 1024, "unit": "MB"} for name, kb in last.items()]
    rows.append({"measure": "RSS of the whole idle mesh", "value": total, "unit": "MB"})
    rows.append(
        {
            "measure": f"up -> every service SERVING (median of {opts.runs})",
            "value": statistics.median(ready_times),
            "unit": "s",
        }
    )
    report(
        "footprint",
        "idle mesh: memory and start-up",
        rows,
        {"ready_s_runs": ready_times, "target_total_rss_mb": 250, "target_ready_s": 2.0},
    )


if __name__ == "__main__":
    main()
