"""`agentmesh debug` against live services: every thread's and asyncio task's stack, the heap's top
allocation sites and their growth, a sampling profile drawn as a flame graph; and the Debug service
refusing anyone without the admin key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentmesh.local import TENANT_KEYS, Mesh
from protos.agentmesh.v1 import debug_pb2, debug_pb2_grpc
from services.runtime.debug import is_local
from tests.conftest import client_for, run


def debug(mesh: Mesh, *args: str, cwd: Path | None = None) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "agentmesh", "debug", *args, "--data-dir", str(mesh.data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **mesh.env},
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_stacks_show_every_thread_and_asyncio_task(mesh: Mesh) -> None:
    stacks = debug(mesh, "stacks", "coordinator")
    assert stacks["service"] == "coordinator" and stacks["pid"] == mesh.pid("coordinator")
    assert "MainThread" in [t["name"] for t in stacks["threads"]]
    tasks = {t["name"]: t for t in stacks["tasks"]}
    assert "wake-sweeper" in tasks and "sweep_forever" in tasks["wake-sweeper"]["coroutine"]
    assert "core.py" in tasks["wake-sweeper"]["stack"]
    assert debug(mesh, "stacks", mesh.env["AGENTMESH_EXECUTOR_ADDR"])["service"] == "executor"


def test_heap_tracing_starts_then_shows_top_sites_and_growth(mesh: Mesh) -> None:
    first = debug(mesh, "heap", "planner")
    assert first["tracing"] and first["started_now"]
    steps = {"steps": [{"id": f"s{i}", "tool": "echo", "args": {"i": i}} for i in range(20)]}

    async def work() -> None:
        async with client_for(mesh) as client:
            await client.wait((await client.submit("pipeline", steps)).id)

    try:
        debug(mesh, "heap", "planner")
        run(work())
        heap = debug(mesh, "heap", "planner", "--top", "5")
        assert (
            heap["tracing"] and len(heap["top"]) == 5 and int(heap["traced_bytes"]) > 0
        )  # int64: a string in JSON
        assert all(int(a["size_bytes"]) > 0 and ":" in a["where"] for a in heap["top"])
        assert heap["since_s"] > 0 and "grown" in heap
    finally:
        stopped = debug(mesh, "heap", "planner", "--stop")
    assert not stopped.get("tracing", False)


def test_a_profile_is_written_as_a_flame_graph_and_folded_stacks(mesh: Mesh, tmp_path: Path) -> None:
    out = tmp_path / "coordinator.svg"
    report = debug(
        mesh, "profile", "coordinator", "--seconds", "1", "--sampler", "builtin", "--out", str(out)
    )
    assert report["samples"] >= 20 and report["stacks"] >= 1
    svg = ET.parse(out).getroot()
    assert svg.tag.endswith("svg") and len(svg.findall(".//{http://www.w3.org/2000/svg}rect")) >= 2
    folded = (tmp_path / "coordinator.folded").read_text().splitlines()
    assert folded and all(line.rsplit(" ", 1)[1].isdigit() for line in folded)
    assert any(line.startswith("MainThread;") for line in folded)


def test_only_the_admin_key_opens_the_debug_service(mesh: Mesh) -> None:
    async def go() -> None:
        async with grpc.aio.insecure_channel(mesh.coordinator_addr) as channel:
            stub = debug_pb2_grpc.DebugStub(channel)
            for key in (None, TENANT_KEYS["alpha"], "ama_guess"):
                metadata = (("authorization", f"Bearer {key}"),) if key else ()
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Stacks(debug_pb2.StacksRequest(), metadata=metadata, timeout=10)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

    run(go())


@pytest.mark.parametrize(
    ("peer", "local"),
    [
        ("ipv4:127.0.0.1:5051", True),
        ("ipv6:[::1]:5051", True),
        ("unix:/run/x", True),
        ("ipv4:10.0.0.2:1", False),
    ],
)
def test_the_debug_service_answers_only_on_loopback(peer: str, local: bool) -> None:
    assert is_local(peer) is local
