"""agentmesh: a runtime for long-lived AI agent tasks. The public facade: the client and the CLI."""

from __future__ import annotations

from typing import Any

__all__ = ["AgentMeshClient"]


def __getattr__(name: str) -> Any:
    # Lazy, so `agentmesh serve` can set gRPC's environment before gRPC is first imported.
    if name == "AgentMeshClient":
        from agentmesh.client import AgentMeshClient

        return AgentMeshClient
    raise AttributeError(name)
