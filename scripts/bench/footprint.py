#!/usr/bin/env python3
"""Footprint: RSS of the idle mesh (six processes; no model is loaded), and `agentmesh up` until
every service answers SERVING.

    .venv/bin/python scripts/bench/footprint.py [--runs 5]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _common import ROOT, pss_kb, report, rss_kb

from agentmesh.local import up_command, wait_ready_file


def one_run() -> tuple[float, dict[str, tuple[int, int]]]:
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready.json"
        argv, env = up_command(Path(tmp) / "data", ready)
        up = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            info = wait_ready_file(up, ready)
            time.sleep(2.0)  # idle
            pids = {**info["pids"], "agentmesh up (supervisor)": up.pid}
            return info["ready_s"], {name: (rss_kb(pid), pss_kb(pid)) for name, pid in pids.items()}
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
    services = {name: v for name, v in last.items() if not name.startswith("agentmesh up")}
    total_rss = sum(r for r, _ in services.values()) / 1024
    total_pss = sum(p for _, p in services.values()) / 1024
    rows = [{"measure": name, "RSS MB": r / 1024, "PSS MB": p / 1024} for name, (r, p) in last.items()]
    rows.append({"measure": "the six services", "RSS MB": total_rss, "PSS MB": total_pss})
    rows.append(
        {
            "measure": f"up -> every service SERVING, s (median of {opts.runs})",
            "RSS MB": statistics.median(ready_times),
            "PSS MB": "",
        }
    )
    report(
        "footprint",
        "idle mesh: memory and start-up",
        rows,
        {
            "ready_s_runs": ready_times,
            "total_rss_mb": total_rss,
            "total_pss_mb": total_pss,
            "target_total_rss_mb": 250,
            "target_ready_s": 2.0,
        },
    )


if __name__ == "__main__":
    main()
