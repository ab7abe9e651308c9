"""A real mesh for a user's agents, for pytest: every process on free loopback ports, strict mode
on, stopped by pid at the end even when the test failed.

    # conftest.py
    from agentmesh.testing import mesh_fixture
    mesh = mesh_fixture("my_agents.py")            # a module-scoped fixture called `mesh`

    # test_my_agents.py
    async def run_one(mesh):
        async with mesh.client() as client:
            task = await client.submit("triage", {"host": "db1"})
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from agentmesh.client import AgentMeshClient
from agentmesh.local import TENANT_KEYS, Mesh

M = TypeVar("M", bound=Mesh)


class AgentMesh(Mesh):
    """A `Mesh` serving the given agents, with a client for its first tenant."""

    def client(self, tenant: str = "alpha") -> AgentMeshClient:
        return AgentMeshClient(self.coordinator_addr, TENANT_KEYS[tenant])


@contextlib.contextmanager
def running_mesh(
    agents: str | Path, *, root: Path | None = None, strict: bool = True, models: bool = False, **env: str
) -> Iterator[AgentMesh]:
    """The mesh, up, serving `agents` (module paths or .py files, comma-separated)."""
    spec = ",".join(
        str(Path(e).resolve()) if str(e).endswith(".py") else str(e) for e in str(agents).split(",") if e
    )
    own_root = root is None
    where = Path(tempfile.mkdtemp(prefix="agentmesh-test-")) if root is None else root
    mesh = AgentMesh(
        where,
        extra_env={"AGENTMESH_AGENTS": spec, "AGENTMESH_STRICT": str(strict).lower(), **env},
        models=models,
    )
    try:
        with started(mesh):
            yield mesh
    finally:
        if own_root:
            shutil.rmtree(where, ignore_errors=True)


async def registered(
    client: AgentMeshClient, worker_id: str, agent: str, version: str = "", timeout_s: float = 30.0
) -> None:
    """Wait until the coordinator routes `agent` (at `version`, if given) to worker `worker_id`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        for info in (await client.list_agents()).agents:
            for served in info.versions if info.name == agent else ():
                if worker_id in served.workers and (not version or served.version == version):
                    return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"worker {worker_id} did not register {agent} within {timeout_s:g}s")
        await asyncio.sleep(0.05)


@contextlib.contextmanager
def started(mesh: M) -> Iterator[M]:
    """The mesh started, then stopped by pid whatever happens; its logs shown when the block fails."""
    try:
        mesh.start()
        yield mesh
    except BaseException:
        mesh.dump_logs()
        raise
    finally:
        mesh.stop()


def mesh_fixture(
    agents: str | Path, *, name: str = "mesh", scope: str = "module", **options: Any
) -> Callable[..., Any]:
    """A pytest fixture called `name`, yielding a running mesh; assign it to a module-level name in a
    conftest.py or test module."""
    import pytest

    @pytest.fixture(scope=scope, name=name)  # type: ignore[misc]
    def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentMesh]:
        with running_mesh(agents, root=tmp_path_factory.mktemp("agentmesh"), **options) as running:
            yield running

    return mesh
