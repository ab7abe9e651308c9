"""A data pipeline with fan-out over shards: split the rows, one child task per shard computes its
statistics in a sandbox, all are joined, and the totals are reduced here.

    .venv/bin/agentmesh up --agents examples/agents/shards.py
    .venv/bin/agentmesh submit shard-stats --input '{"rows": [3, 1, 4, 1, 5, 9, 2, 6], "shards": 3}' --watch

A shard that fails fails the whole job at once and stops the others (`join="fail_fast"`); each
child is a task of its own, with its share of the budget, its own events and retries.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from agentmesh.sdk import Context, RetryPolicy, agent

SHARD = """
import json
rows = json.load(open("rows.json"))
print(json.dumps({"count": len(rows), "sum": sum(rows), "min": min(rows), "max": max(rows)}))
"""


class Job(BaseModel):
    rows: list[float] = Field(min_length=1, max_length=100_000)
    shards: int = Field(default=4, ge=1, le=64)


class Shard(BaseModel):
    rows: list[float] = Field(min_length=1)


@agent(name="shard-stats", version="1", input=Job)
async def shard_stats(ctx: Context, job: Job) -> dict:
    """Statistics of a list of numbers, computed shard by shard in parallel child tasks."""
    shards = min(job.shards, len(job.rows))
    size = -(-len(job.rows) // shards)
    parts = [job.rows[i : i + size] for i in range(0, len(job.rows), size)]
    ctx.emit("split", {"shards": len(parts)})
    joined = await ctx.spawn_many([("shard-stat", {"rows": part}) for part in parts], join="fail_fast")
    stats = [child.result for child in joined.children]
    count = sum(s["count"] for s in stats)
    return {
        "shards": len(parts),
        "count": count,
        "sum": sum(s["sum"] for s in stats),
        "mean": sum(s["sum"] for s in stats) / count,
        "min": min(s["min"] for s in stats),
        "max": max(s["max"] for s in stats),
    }


@agent(name="shard-stat", version="1", input=Shard)
async def shard_stat(ctx: Context, shard: Shard) -> dict:
    """One shard's count, sum, min and max."""
    out = await ctx.exec(
        "python",
        code=SHARD,
        files={"rows.json": json.dumps(shard.rows)},
        timeout=60,
        retry=RetryPolicy(attempts=2),
    )
    return json.loads(out.stdout)
