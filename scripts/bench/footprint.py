#!/usr/bin/env python3
"""Footprint: RSS of the idle mesh (six processes; no model is loaded), and `agentmesh up` until
every service answers SERVING.

    .venv/bin/python scripts/bench/footprint.py [--runs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _common import ROOT, pss_kb, report, rss_kb

from agentmesh.local import up_command, wait_ready_file
from services.runtime.procs import free_port, grpc_ready, service_argv


def one_run() -> tuple[float, dict[str, tuple[int, int]]]:
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready.json"
        argv, env = up_command(Path(tmp) / "data", ready)
        # Model weights are excluded from this figure: the inference worker starts without models
        # (and so without its engine's libraries); `inference_with_models` below measures them.
        env |= {"AGENTMESH_GENERATE_MODEL": "none", "AGENTMESH_EMBED_MODEL": "none"}
        up = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            info = wait_ready_file(up, ready)
            time.sleep(2.0)  # idle
            pids = {**info["pids"], "agentmesh up (supervisor)": up.pid}
            found = {name: (rss_kb(pid), pss_kb(pid)) for name, pid in pids.items()}
            # The executor's ready warm sandboxes: the only processes an idle executor has started.
            warm = _descendants(info["pids"]["executor"])
            found[f"warm sandboxes ({len(warm)} processes; not in the total)"] = (
                sum(rss_kb(pid) for pid in warm),
                sum(pss_kb(pid) for pid in warm),
            )
            return info["ready_s"], found
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(30)


def _descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = []
        # A child is listed under the thread that started it (the executor's pool has its own).
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                children += [int(c) for c in (task / "children").read_text().split()]
        found += children
        frontier += children
    return found


def inference_with_models() -> tuple[int, int, float]:
    """RSS and PSS of an inference worker with the default models loaded and warm, and its start-up."""
    port, bus = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
    proc = subprocess.Popen(
        service_argv(
            "inference",
            "--inference-addr",
            f"127.0.0.1:{port}",
            "--bus-pub-addr",
            f"tcp://127.0.0.1:{bus}",
            "--bus-sub-addr",
            f"tcp://127.0.0.1:{free_port()}",
        ),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        started = time.monotonic()
        probe = grpc_ready(f"127.0.0.1:{port}")
        while not probe():
            if proc.poll() is not None or time.monotonic() - started > 120:
                raise RuntimeError("the inference worker did not become ready")
            time.sleep(0.1)
        ready_s = time.monotonic() - started
        time.sleep(1.0)
        return rss_kb(proc.pid), pss_kb(proc.pid), ready_s
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    opts = parser.parse_args()
    ready_times, last = [], {}
    for _ in range(opts.runs):
        ready_s, last = one_run()
        ready_times.append(ready_s)
    services = {name: v for name, v in last.items() if not name.startswith(("agentmesh up", "warm"))}
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
    model_rss, model_pss, model_ready = inference_with_models()
    rows.append(
        {
            "measure": "inference with the default models loaded (not in the total)",
            "RSS MB": model_rss / 1024,
            "PSS MB": model_pss / 1024,
        }
    )
    rows.append({"measure": "inference start with models -> SERVING, s", "RSS MB": model_ready, "PSS MB": ""})
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
