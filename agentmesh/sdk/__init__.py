"""agentmesh's durable-function SDK: agents as ordinary async Python.

    from agentmesh.sdk import Context, agent

    @agent(name="hello", version="1")
    async def hello(ctx: Context, inp: dict) -> dict:
        out = await ctx.exec("python", code="print(6 * 7)")
        return {"answer": out.stdout.strip()}

Every `ctx.*` action is recorded in the task's journal as it is asked for and as it settles; after a
crash the function is replayed from the journal, taking exactly the same path, and carries on from
where it was. Importing this package needs none of the services' dependencies. docs/agents.md is the
guide; the replay rules are in its "Replay" section.
"""

from agentmesh.sdk.commands import Join, RetryPolicy
from agentmesh.sdk.context import Context
from agentmesh.sdk.definition import AgentDefinition, agent
from agentmesh.sdk.loop import ForeignAwait, NoWinner, Settled
from agentmesh.sdk.results import (
    ActionFailed,
    AgentError,
    Cancelled,
    EmbedResult,
    ExecResult,
    InferResult,
    InputResult,
    NondeterministicCall,
    SleepResult,
    SpawnResult,
    Status,
    Tool,
    Usage,
)

__all__ = [
    "ActionFailed",
    "AgentDefinition",
    "AgentError",
    "Cancelled",
    "Context",
    "EmbedResult",
    "ExecResult",
    "ForeignAwait",
    "InferResult",
    "InputResult",
    "Join",
    "NoWinner",
    "NondeterministicCall",
    "RetryPolicy",
    "Settled",
    "SleepResult",
    "SpawnResult",
    "Status",
    "Tool",
    "Usage",
    "agent",
]
