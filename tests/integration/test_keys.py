"""API keys made and revoked while the mesh runs (`agentmesh keys`), expiry, the admin key, and the
audit log of every cancel, input and key change (`agentmesh audit`)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import grpc
import httpx
import pytest

from agentmesh.client import AgentMeshClient
from agentmesh.local import TENANT_KEYS, Mesh
from protos.agentmesh.v1 import agent_service_pb2 as api
from protos.agentmesh.v1 import agent_service_pb2_grpc as api_grpc
from protos.agentmesh.v1 import common_pb2 as pb
from services.runtime.errors import AgentMeshError
from tests.conftest import run

ASK = {"steps": [{"id": "ok", "tool": "approval", "args": {"prompt": "ship it?"}}]}


def admin_cli(mesh: Mesh, *args: str) -> Any:
    """`agentmesh keys ...` / `agentmesh audit ...` with the mesh's admin key, as JSON."""
    done = subprocess.run(
        [sys.executable, "-m", "agentmesh", *args, "--address", mesh.coordinator_addr, "--data-dir",
         str(mesh.data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def wait_state(client: AgentMeshClient, task_id: str, state: int) -> None:
    for _ in range(500):
        if (await client.get(task_id)).state == state:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"task {task_id} never reached state {state}")


def test_a_key_made_at_runtime_works_at_once_and_its_revocation_needs_no_restart(mesh: Mesh) -> None:
    created = admin_cli(mesh, "keys", "create", "gamma", "--label", "ci")
    key_id, secret = created["key"]["id"], created["secret"]
    assert created["key"]["tenant"] == "gamma" and key_id.startswith("key_")
    listed = admin_cli(mesh, "keys", "list", "--tenant", "gamma")["keys"]
    assert [k["id"] for k in listed] == [key_id] and listed[0]["source"] == "store"
    assert secret not in json.dumps(listed)  # the store keeps only its digest

    async def use() -> tuple[str, str]:
        async with AgentMeshClient(mesh.coordinator_addr, secret) as gamma:
            answered = await gamma.submit("pipeline", ASK)
            await wait_state(gamma, answered.id, pb.TASK_STATE_WAITING)
            await gamma.send_input(answered.id, {"approved": True})
            assert (await gamma.wait(answered.id)).state == pb.TASK_STATE_SUCCEEDED
            dropped = await gamma.submit("pipeline", ASK)
            await gamma.cancel(dropped.id, reason="not today")
            assert (await gamma.wait(dropped.id)).state == pb.TASK_STATE_CANCELLED
            return answered.id, dropped.id

    answered, dropped = run(use())
    revoked = admin_cli(mesh, "keys", "revoke", key_id)
    assert revoked["revoked_at"] > 0

    async def refused() -> None:
        async with AgentMeshClient(mesh.coordinator_addr, secret) as gamma:
            with pytest.raises(AgentMeshError) as info:
                await gamma.list()
            assert (
                info.value.reason == "REVOKED_API_KEY" and info.value.code == grpc.StatusCode.UNAUTHENTICATED
            )

    run(refused())
    reply = httpx.get(
        f"{mesh.gateway_url}/v1/tasks", headers={"authorization": f"Bearer {secret}"}, timeout=10
    )
    assert reply.status_code == 401 and reply.json()["error"]["reason"] == "REVOKED_API_KEY"
    assert admin_cli(mesh, "keys", "list", "--tenant", "gamma")["keys"] == []  # revoked: shown with --all
    assert admin_cli(mesh, "keys", "list", "--tenant", "gamma", "--all")["keys"][0]["revoked_at"] > 0

    entries = admin_cli(mesh, "audit", "--tenant", "gamma")["entries"]
    seen = [(e["action"], e["target"], e["key_id"]) for e in reversed(entries)]
    assert seen == [
        ("key.create", key_id, "admin"),
        ("task.input", answered, key_id),
        ("task.cancel", dropped, key_id),
        ("key.revoke", key_id, "admin"),
    ]
    assert json.loads(entries[1]["detail_json"])["reason"] == "not today"


def test_an_expired_key_is_refused(mesh: Mesh) -> None:
    secret = admin_cli(mesh, "keys", "create", "delta", "--expires-in", "1s")["secret"]

    async def go() -> None:
        async with AgentMeshClient(mesh.coordinator_addr, secret) as delta:
            await delta.list()
            await asyncio.sleep(1.2)
            with pytest.raises(AgentMeshError) as info:
                await delta.list()
            assert info.value.reason == "EXPIRED_API_KEY"

    run(go())


def test_only_the_admin_key_manages_keys(mesh: Mesh) -> None:
    admin = (mesh.data_dir / "admin.key").read_text().strip()

    async def go() -> None:
        async with grpc.aio.insecure_channel(mesh.coordinator_addr) as channel:
            stub = api_grpc.AdminStub(channel)
            request = api.CreateKeyRequest(tenant="alpha")
            for key, code in (
                (TENANT_KEYS["alpha"], grpc.StatusCode.PERMISSION_DENIED),
                ("not-a-key", grpc.StatusCode.UNAUTHENTICATED),
                (None, grpc.StatusCode.UNAUTHENTICATED),
            ):
                metadata = (("authorization", f"Bearer {key}"),) if key else ()
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.CreateKey(request, metadata=metadata, timeout=10)
                assert info.value.code() == code
            admin_md = (("authorization", f"Bearer {admin}"),)
            keys = (
                await stub.ListKeys(api.ListKeysRequest(tenant="alpha"), metadata=admin_md, timeout=10)
            ).keys
            configured = [k for k in keys if k.source == "config"]
            assert configured and all(k.id.startswith("config_") for k in configured)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.RevokeKey(api.RevokeKeyRequest(id=configured[0].id), metadata=admin_md, timeout=10)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.CreateKey(api.CreateKeyRequest(tenant="no spaces"), metadata=admin_md, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    run(go())
