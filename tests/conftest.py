from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentmesh.client import AgentMeshClient
from agentmesh.local import TENANT_KEYS, Mesh
from agentmesh.local_postgres import REQUIRED_ENV, PostgresServer, find_bin_dir
from agentmesh.testing.mesh import started
from protos.agentmesh.v1 import common_pb2 as pb


def run_mesh(root: Path, request: pytest.FixtureRequest, **kwargs: object) -> Iterator[Mesh]:
    with started(Mesh(root, **kwargs)) as mesh:  # type: ignore[arg-type]
        yield mesh


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Mesh]:
    """One mesh shared by the tests that do not disturb it."""
    yield from run_mesh(tmp_path_factory.mktemp("mesh"), request)


@pytest.fixture(scope="session")
def model_mesh(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Mesh]:
    """A mesh whose inference worker has the embedded default models loaded."""
    yield from run_mesh(tmp_path_factory.mktemp("models"), request, models=True)


@pytest.fixture
def own_mesh(tmp_path: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """A factory for a private mesh (tests that kill processes or change limits)."""
    started: list[Mesh] = []

    def make(**kwargs: object) -> Mesh:
        mesh = Mesh(tmp_path / f"mesh{len(started)}", **kwargs)  # type: ignore[arg-type]
        started.append(mesh)
        mesh.start()
        return mesh

    try:
        yield make
    finally:
        for mesh in started:
            if request.node.rep_call_failed if hasattr(request.node, "rep_call_failed") else False:
                mesh.dump_logs()
            mesh.stop()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every sandbox of a mesh may write (the executor's AGENTMESH_SHARED_DIR): how a test
    sees what actions did across runs. In the temp dir itself, not under the test's 0700 tmp_path:
    the sandbox's unprivileged uid must be able to walk to it."""
    path = Path(tempfile.mkdtemp(prefix="agentmesh-test-shared-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the suite's own (agentmesh/local_postgres.py); skipped where none is installed,
    unless scripts/test asked for it (then that is a failure)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        if os.environ.get(REQUIRED_ENV) == "required":
            pytest.fail("PostgreSQL is required (scripts/test) but no initdb was found")
        pytest.skip("no PostgreSQL server installed (scripts/test installs one)")
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """A new, empty database on the suite's PostgreSQL server."""
    return postgres_server.new_database()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
    report = yield
    if report.when == "call" and report.failed:
        item.rep_call_failed = True  # type: ignore[attr-defined]
    return report


def run(coro):  # type: ignore[no-untyped-def]
    """Run a coroutine to completion with a hard bound, from a sync test."""
    return asyncio.run(asyncio.wait_for(coro, 120))


def client_for(mesh: Mesh, tenant: str = "alpha") -> AgentMeshClient:
    return AgentMeshClient(mesh.coordinator_addr, TENANT_KEYS[tenant])


async def wait_for_action_processes(mesh: Mesh, name: str, count: int, timeout_s: float = 20) -> list[int]:
    """Wait until the executor's actions run at least `count` processes called `name`; all their pids."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        procs = mesh.action_processes()
        if sum(1 for comm in procs.values() if comm == name) >= count:
            return list(procs)
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"expected {count} {name!r} processes in the sandbox, saw {procs}")
        await asyncio.sleep(0.02)


async def survivors(pids: list[int], timeout_s: float = 5.0) -> list[int]:
    """The processes of `pids` still alive after waiting up to `timeout_s` for all of them to exit."""
    from services.runtime.procs import pid_alive

    deadline = asyncio.get_running_loop().time() + timeout_s
    while any(pid_alive(p) for p in pids) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    return [p for p in pids if pid_alive(p)]


def inference_running(mesh: Mesh) -> float:
    """How many sequences the inference worker's batch holds now (its metrics)."""
    import httpx

    body = httpx.get(f"http://127.0.0.1:{mesh.metrics_ports['inference']}/metrics", timeout=10).text
    values = [line for line in body.splitlines() if line.startswith("agentmesh_inference_running ")]
    return float(values[0].split()[1]) if values else float("nan")


def wait_inference_idle(mesh: Mesh, timeout_s: float = 10.0) -> float:
    """Poll the inference worker's metrics until no sequence runs; the last `running` value seen."""
    import time

    deadline = time.monotonic() + timeout_s
    running = float("nan")
    while time.monotonic() < deadline:
        running = inference_running(mesh)
        if running == 0:
            break
        time.sleep(0.05)
    return running


async def cancel_once_streaming(client: AgentMeshClient, task_id: str) -> pb.Task:
    """Cancel a task as soon as its first output streams (a generation under way); its final state."""
    async for event in client.watch(task_id):
        if event.kind == "action.output":
            break
    await client.cancel(task_id)
    return await client.wait(task_id)
