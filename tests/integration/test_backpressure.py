"""A full queue refuses with RESOURCE_EXHAUSTED / 429 + Retry-After, and loses nothing it accepted."""

from __future__ import annotations

import asyncio

import httpx

from agentmesh.local import TENANT_KEYS
from protos.agentmesh.v1 import common_pb2 as pb
from services.runtime.errors import ResourceExhausted
from tests.conftest import client_for, run

QUEUE = 5
EXTRA = 3


def test_queue_bound_refuses_exactly_the_overflow(own_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = own_mesh(extra_env={"AGENTMESH_MAX_RUNNING": "1", "AGENTMESH_MAX_QUEUED": str(QUEUE)})
    quick = {"steps": [{"id": "e", "tool": "echo"}]}

    async def go() -> None:
        async with client_for(mesh) as client:
            # A running task that waits holds no slot; a long shell step does.
            holder = await client.submit(
                "pipeline", {"steps": [{"id": "s", "tool": "shell", "args": {"command": "sleep 3"}}]}
            )
            await asyncio.sleep(0.5)
            accepted, refused = [], []
            for _ in range(QUEUE + EXTRA):
                try:
                    accepted.append(await client.submit("pipeline", quick))
                except ResourceExhausted as exc:
                    assert exc.retry_after_s and exc.retry_after_s > 0
                    refused.append(exc)
            assert len(accepted) == QUEUE and len(refused) == EXTRA
            async with httpx.AsyncClient(base_url=mesh.gateway_url, timeout=30) as http:
                reply = await http.post(
                    "/v1/tasks",
                    json={"agent": "pipeline", "input": quick},
                    headers={"Authorization": f"Bearer {TENANT_KEYS['alpha']}"},
                )
                assert reply.status_code == 429
                assert int(reply.headers["Retry-After"]) >= 1
            finals = await asyncio.gather(*[client.wait(t.id) for t in [holder, *accepted]])
            assert all(t.state == pb.TASK_STATE_SUCCEEDED for t in finals)

    run(go())
