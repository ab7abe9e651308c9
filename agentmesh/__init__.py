"""agentmesh: a runtime for long-lived AI agent tasks. The public facade: the client and the CLI."""

from agentmesh.client import AgentMeshClient

__all__ = ["AgentMeshClient"]
