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


@agent(name="bench-chains", version="1")
async def chains(ctx: Context, inp: dict) -> dict:
    """Two chains of shell steps side by side (each step's input: the durations of its chain)."""

    async def chain(durations: list[float]) -> int:
        for seconds in durations:
            await ctx.exec("shell", command=f"sleep {seconds}")
        return len(durations)

    done = await ctx.gather(*(chain(durations) for durations in inp["chains"]))
    return {"steps": sum(done)}


class ChainsPerWaveAgent:
    """`bench-chains` as an agent that decides per wave (low-level class API): step i of every
    chain, then, once all of them are done, step i+1."""

    name = "bench-chains-waves"
    description = "chains of sleep steps, one wave per step index"

    def validate(self, input: Any) -> None:  # noqa: A002
        pass

    def decide(self, ctx: Any) -> pb.Decision:
        i = (ctx.memo or {"i": -1})["i"] + 1
        chains = ctx.input["chains"]
        wave = [
            pb.Action(key=f"c{c}s{i}", exec=pb.ExecAction(tool="shell", args_json=_sleep(d[i])))
            for c, d in enumerate(chains)
            if i < len(d)
        ]
        memo = json.dumps({"i": i})
        if not wave:
            done = pb.Final(state=pb.TASK_STATE_SUCCEEDED, result_json="{}")
            return pb.Decision(memo_json=memo, final=done)
        return pb.Decision(memo_json=memo, actions=wave)


def _sleep(seconds: float) -> str:
    return json.dumps({"command": f"sleep {seconds}"})


chains_per_wave = ChainsPerWaveAgent()
