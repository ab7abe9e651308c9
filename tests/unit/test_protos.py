"""The generated protobuf code in the tree is exactly what `scripts/gen_protos.py` makes now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_protos_are_current():
    proc = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"gen_protos --check failed:\n{proc.stdout}\n{proc.stderr}"
    assert "current" in proc.stdout


def test_configuration_docs_are_current():
    """docs/configuration.md is generated from the config dataclasses; it must not drift."""
    done = subprocess.run(
        [sys.executable, "scripts/gen_config_docs.py", "--check"], cwd=ROOT, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
