"""The `react` agent: the model picks the next tool call, as JSON, until it gives an answer.

Input: `{goal, tools? (python, shell), max_steps? (8), model?, max_tokens? (256), network? (false)}`.
Each step is one decision: ask the model (infer), then run the tool call it chose in the sandbox
(exec) and show it the output. A reply that is not a valid tool call is fed back with what was wrong
and costs a step: a small model's malformed JSON never crashes the task. The task SUCCEEDS with the
model's answer, or FAILS with reason MAX_STEPS and the whole transcript.
"""

from __future__ import annotations

import json
from typing import Any

from protos.agentmesh.v1 import common_pb2 as pb
from services.planner.registry import DecideContext, refuse_input
from services.runtime.errors import InvalidArgument

TOOLS = {
    "python": ("code", "run Python code; you see what it prints"),
    "shell": ("command", "run a shell command; you see its output"),
}
OBSERVATION_CHARS = 1500
STEP_TIMEOUT_S = 120.0
GEN_TIMEOUT_S = 600.0


def parse_call(text: str, tools: list[str]) -> tuple[dict[str, Any] | None, str]:
    """(the call, '') or (None, what is wrong with it). A call is {"tool": NAME, "args": {...}} or
    {"answer": TEXT}; the first JSON object in the reply is taken, fenced or not."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    value: Any = None
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
            break
        except ValueError:
            start = text.find("{", start + 1)
    if not isinstance(value, dict):
        return None, "no JSON object in the reply"
    if "answer" in value:
        return {"answer": str(value["answer"])}, ""
    tool = value.get("tool")
    if tool not in tools:
        return None, f"'tool' must be one of {', '.join(tools)} (got {tool!r})"
    field = TOOLS[tool][0]
    args = value.get("args")
    if not isinstance(args, dict) or not isinstance(args.get(field), str) or not args[field].strip():
        return None, f'{tool} needs "args": {{"{field}": "..."}}'
    return {"tool": tool, "args": {field: args[field]}}, ""


class ReactAgent:
    name = "react"
    description = "A model picks tool calls (python, shell in the sandbox) until it can answer the goal"

    def validate(self, input: Any) -> None:  # noqa: A002
        if not isinstance(input, dict):
            raise InvalidArgument("react input must be an object", field_violations=[("input", "an object")])
        violations: list[tuple[str, str]] = []
        for name in sorted(set(input) - {"goal", "tools", "max_steps", "model", "max_tokens", "network"}):
            violations.append((f"input.{name}", "unknown field"))
        if not isinstance(input.get("goal"), str) or not input["goal"].strip():
            violations.append(("input.goal", "a non-empty string"))
        tools = input.get("tools", list(TOOLS))
        if not isinstance(tools, list) or not tools or any(t not in TOOLS for t in tools):
            violations.append(("input.tools", f"a non-empty list of {', '.join(TOOLS)}"))
        for name, low, high in (("max_steps", 1, 50), ("max_tokens", 16, 4096)):
            value = input.get(name, low)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                violations.append((f"input.{name}", f"integer from {low} to {high}"))
        if not isinstance(input.get("model", ""), str):
            violations.append(("input.model", "a model name"))
        if not isinstance(input.get("network", False), bool):
            violations.append(("input.network", "true or false"))
        refuse_input("react input", violations)

    def decide(self, ctx: DecideContext) -> pb.Decision:
        goal: str = ctx.input["goal"]
        tools: list[str] = ctx.input.get("tools", list(TOOLS))
        max_steps: int = ctx.input.get("max_steps", 8)
        memo: dict[str, Any] = ctx.memo or {"transcript": [], "tokens": {"in": 0, "out": 0}}
        transcript: list[dict[str, Any]] = memo["transcript"]
        for result in ctx.results:
            memo["tokens"]["in"] += result.cost.tokens_in
            memo["tokens"]["out"] += result.cost.tokens_out
            if result.key.startswith("think."):
                if result.status != pb.ACTION_STATUS_OK:
                    return _end(
                        memo, "GENERATION_FAILED", f"the model could not generate: {result.error.message}"
                    )
                reply = _text(result)
                call, problem = parse_call(reply, tools)
                transcript.append({"reply": reply, "call": call, "problem": problem})
                if call is not None and "answer" in call:
                    return _end(memo, "", "", answer=call["answer"])
                if call is not None:
                    return _act(memo, call, len(transcript), ctx.input.get("network", False))
            elif result.key.startswith("act."):
                transcript[-1]["observation"] = _observation(result)
        if len(transcript) >= max_steps:
            return _end(memo, "MAX_STEPS", f"no answer within {max_steps} steps")
        return _think(memo, ctx.input, goal, tools)


def _text(result: pb.ActionResult) -> str:
    try:
        return str(json.loads(result.output_json or "{}").get("text", ""))
    except ValueError:
        return ""


def _system(tools: list[str]) -> str:
    described = "\n".join(
        f'- {name}: {TOOLS[name][1]}. Args: {{"{TOOLS[name][0]}": "..."}}' for name in tools
    )
    return (
        "You solve the user's goal step by step with tools. Tools:\n"
        f"{described}\n"
        'Reply with one JSON object only: {"tool": NAME, "args": {...}} to use a tool, or '
        '{"answer": "..."} when you know the answer.'
    )


def _think(memo: dict[str, Any], input: dict[str, Any], goal: str, tools: list[str]) -> pb.Decision:  # noqa: A002
    messages = [("system", _system(tools)), ("user", goal)]
    for step in memo["transcript"]:
        messages.append(("assistant", step["reply"]))
        if step["problem"]:
            messages.append(
                ("user", f"That was not a valid tool call: {step['problem']}. Reply with JSON only.")
            )
        elif "observation" in step:
            messages.append(("user", f"Result:\n{step['observation']}"))
    action = pb.Action(key=f"think.{len(memo['transcript']) + 1}", timeout_s=GEN_TIMEOUT_S)
    action.infer.CopyFrom(
        pb.InferAction(
            model=input.get("model", ""),
            messages=[pb.ChatMessage(role=role, content=content) for role, content in messages],
            max_tokens=input.get("max_tokens", 256),
            temperature=0.0,
        )
    )
    return pb.Decision(memo_json=json.dumps(memo), actions=[action])


def _act(memo: dict[str, Any], call: dict[str, Any], step: int, network: bool) -> pb.Decision:
    action = pb.Action(key=f"act.{step}", timeout_s=STEP_TIMEOUT_S)
    action.exec.CopyFrom(
        pb.ExecAction(tool=call["tool"], args_json=json.dumps(call["args"]), network=network)
    )
    return pb.Decision(memo_json=json.dumps(memo), actions=[action])


def _observation(result: pb.ActionResult) -> str:
    text = (result.stdout + result.stderr).strip() or "(no output)"
    if len(text) > OBSERVATION_CHARS:
        text = text[:OBSERVATION_CHARS] + "\n[truncated]"
    status = "ok" if result.status == pb.ACTION_STATUS_OK else (result.error.message or "failed")
    return f"[{status}, exit {result.exit_code}]\n{text}"


def _end(memo: dict[str, Any], reason: str, message: str, answer: str | None = None) -> pb.Decision:
    result = {"answer": answer, "steps": memo["transcript"], "tokens": memo["tokens"]}
    decision = pb.Decision(memo_json=json.dumps(memo))
    if reason:
        error = pb.TaskError(reason=reason, message=message)
        decision.final.CopyFrom(
            pb.Final(state=pb.TASK_STATE_FAILED, result_json=json.dumps(result), error=error)
        )
    else:
        decision.final.CopyFrom(pb.Final(state=pb.TASK_STATE_SUCCEEDED, result_json=json.dumps(result)))
    return decision
