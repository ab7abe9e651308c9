"""The agents scripts/bench/sdk.py runs: one sequential agent written on the SDK and the same agent
hand-written on the planner's low-level class API, plus one that parks at once."""

from __future__ import annotations

import json
from typing import Any

from agentmesh.sdk import Context, agent
from protos.agentmesh.v1 import common_pb2 as pb


@agent(name="bench-seq", version="1")
async def seq(ctx: Context, inp: dict) -> dict:
    total = 0
    for i in range(inp["n"]):
        out = await ctx.exec("echo", i=i)
        total += out.output["i"]
    return {"total": total}


@agent(name="bench-park", version="1")
async def park(ctx: Context, inp: dict) -> dict:
    return {"got": await ctx.input("go?")}


class SeqClassAgent:
    """`bench-seq` by hand: the loop's state in the memo, one echo per decision."""

    name = "bench-seq-class"
    description = "n echo actions one after another (low-level class API)"

    def validate(self, input: Any) -> None:  # noqa: A002
        pass

    def decide(self, ctx: Any) -> pb.Decision:
        memo = ctx.memo or {"i": 0, "total": 0}
        if ctx.results:
            memo["total"] += json.loads(ctx.results[0].output_json)["i"]
            memo["i"] += 1
        if memo["i"] == ctx.input["n"]:
            return pb.Decision(
                memo_json=json.dumps(memo),
                final=pb.Final(
                    state=pb.TASK_STATE_SUCCEEDED, result_json=json.dumps({"total": memo["total"]})
                ),
            )
        action = pb.Action(
            key=f"echo#{memo['i']}", exec=pb.ExecAction(tool="echo", args_json=json.dumps({"i": memo["i"]}))
        )
        return pb.Decision(memo_json=json.dumps(memo), actions=[action])


seq_class = SeqClassAgent()
