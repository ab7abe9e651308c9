"""The gateway's side of the coordinator connection: one shared channel, per-request keys, health.

Guarantees: one gRPC channel for all requests (per-request clients from `with_key` share it); the
channel is created lazily on the event loop that serves requests (grpc.aio binds a channel to the
loop it was made on); `close()` releases only what this object created, never a client it was given.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh.client import AgentMeshClient
from services.runtime.channels import insecure_channel

log = logging.getLogger(__name__)


class Upstream:
    def __init__(self, address: str, timeout_s: float, client: AgentMeshClient | None = None) -> None:
        self.address = client.address if client is not None else address
        self._timeout_s = timeout_s
        self._client = client
        self._owns_client = client is None
        self._health_channel: grpc.aio.Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set when the server begins a graceful shutdown: open event streams end so clients
        # reconnect (with Last-Event-ID) to a gateway that stays.
        self.draining = asyncio.Event()

    def bind_loop(self) -> None:
        self._loop = asyncio.get_running_loop()

    def begin_drain(self) -> None:
        """Safe to call from a signal handler or another thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self.draining.set)

    def client(self, api_key: str | None) -> AgentMeshClient:
        """A client that authenticates as `api_key` (None: no key, the coordinator decides)."""
        if self._client is None:
            self._client = AgentMeshClient(self.address, timeout_s=self._timeout_s)
        return self._client.with_key(api_key)

    async def health(self, timeout_s: float) -> tuple[bool, str]:
        """Ask the coordinator's standard health service about the server as a whole (service "")."""
        if self._health_channel is None:
            self._health_channel = insecure_channel(self.address)
        stub = health_pb2_grpc.HealthStub(self._health_channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.RpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return reply.status == health_pb2.HealthCheckResponse.SERVING, status

    async def close(self) -> None:
        if self._health_channel is not None:
            await self._health_channel.close()
            self._health_channel = None
        if self._owns_client and self._client is not None:
            await self._client.close()
            self._client = None
