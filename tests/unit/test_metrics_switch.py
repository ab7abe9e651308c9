"""Metrics off: the Prometheus client is never loaded and every call is accepted. Metrics on: each
declared family is exported from the start. Each case runs in a fresh interpreter, since both the
switch and the client's registry belong to the process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
from services.runtime import metrics
DONE = metrics.Counter("t_done_total", "done", ["kind"])
LATENCY = metrics.Histogram("t_seconds", "latency", ["kind"], buckets=(0.1, 1.0))
metrics.configure(enabled={enabled})
LATER = metrics.Gauge("t_later", "declared after the switch")
DONE.labels("a").inc()
LATENCY.labels("a").observe(0.5)
LATER.set_function(lambda: 7)
loaded = "prometheus_client" in sys.modules
text = ""
if loaded:
    from prometheus_client import REGISTRY, generate_latest
    text = generate_latest(REGISTRY).decode()
print(loaded, "t_done_total{{kind=\\"a\\"}} 1.0" in text, "t_later 7.0" in text, "t_seconds_bucket" in text)
"""


def run(enabled: bool) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(enabled=enabled)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_metrics_off_never_load_the_prometheus_client() -> None:
    assert run(False) == "False False False False"


def test_metrics_on_are_the_prometheus_clients_own() -> None:
    assert run(True) == "True True True True"
