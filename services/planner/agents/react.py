"""The `react` agent: the model picks the next tool call, as JSON, until it gives an answer.

Input: `{goal, tools?, max_steps? (8), model?, max_tokens? (256), network? (false)}`. The tools are the
executor's own, as it declares them (DecideContext.tools): `tools` names the ones to offer, and by
default every tool but `echo` is offered. The model sees each tool's description and args schema.

Each step is one decision: ask the model (infer), then run the tool call it chose in a fresh sandbox
(exec) and show it the output. A call is `{"tool": NAME, "args": {...}, "files"?: {NAME: TEXT}}`
(files are put in the tool's working directory) or `{"answer": TEXT}`. A reply that is not a valid
call (no JSON, an unknown tool, args that break the tool's schema) is fed back with what was wrong
and costs a step: a small model's malformed JSON never crashes the task. The task SUCCEEDS with the
model's answer, or FAILS with reason MAX_STEPS and the whole transcript (UNKNOWN_TOOL when `tools`
names one the executor does not have).
"""

from __future__ import annotations

import json
from typing import Any

from protos.agentmesh.v1 import common_pb2 as pb
from services.planner.registry import DecideContext, refuse_input
from services.runtime.errors import InvalidArgument, Unavailable

# Offered only when asked for by name: it runs nothing, so a model learns nothing from it.
NOT_OFFERED_BY_DEFAULT = frozenset({"echo"})
OBSERVATION_CHARS = 1500
STEP_TIMEOUT_S = 120.0
GEN_TIMEOUT_S = 600.0
MAX_FILES = 20


def parse_call(text: str, specs: dict[str, pb.ToolSpec]) -> tuple[dict[str, Any] | None, str]:
    """(the call, '') or (None, what is wrong with it), for a model offered the tools in `specs`.
    The first JSON object in the reply is taken, fenced or not."""
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
    if tool not in specs:
        return None, f"'tool' must be one of {', '.join(specs)} (got {tool!r})"
    args = value.get("args", {})
    problem = _args_problem(specs[tool], args)
    if problem:
        return None, f"{tool} args: {problem}"
    files = value.get("files", {})
    if (
        not isinstance(files, dict)
        or len(files) > MAX_FILES
        or not all(isinstance(k, str) and k and isinstance(v, str) for k, v in files.items())
    ):
        return None, f'"files" must be an object of up to {MAX_FILES} file names to their text'
    call: dict[str, Any] = {"tool": tool, "args": args}
    if files:
        call["files"] = files
    return call, ""


def _args_problem(spec: pb.ToolSpec, args: Any) -> str:
    """What is wrong with `args` by the tool's declared JSON Schema; '' when nothing is."""
    # Imported here: only a planner that runs react agents needs it.
    from jsonschema import Draft202012Validator  # noqa: PLC0415

    schema = json.loads(spec.args_schema_json or "{}")
    errors = sorted(
        Draft202012Validator(schema).iter_errors(args), key=lambda e: [str(p) for p in e.schema_path]
    )
    # All of them (a few): a missing "code" and an unexpected "command" are one mistake, told whole.
    return "; ".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" if e.absolute_path else e.message
        for e in errors[:3]
    )


class ReactAgent:
    name = "react"
    description = "A model picks tool calls (the executor's tools, in a sandbox) until it can answer the goal"

    def validate(self, input: Any) -> None:  # noqa: A002
        if not isinstance(input, dict):
            raise InvalidArgument("react input must be an object", field_violations=[("input", "an object")])
        violations: list[tuple[str, str]] = []
        for name in sorted(set(input) - {"goal", "tools", "max_steps", "model", "max_tokens", "network"}):
            violations.append((f"input.{name}", "unknown field"))
        if not isinstance(input.get("goal"), str) or not input["goal"].strip():
            violations.append(("input.goal", "a non-empty string"))
        tools = input.get("tools", ["-"])
        if (
            not isinstance(tools, list)
            or not tools
            or not all(isinstance(t, str) and t for t in tools)
            or len(set(tools)) != len(tools)
        ):
            violations.append(("input.tools", "a non-empty list of distinct tool names"))
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
        max_steps: int = ctx.input.get("max_steps", 8)
        memo: dict[str, Any] = ctx.memo or {"transcript": [], "tokens": {"in": 0, "out": 0}}
        if "tools" not in memo:
            # Chosen once, at the first decision: the prompt stays the same for the whole task.
            offered, problem = _offered(ctx)
            if problem:
                return _end(memo, "UNKNOWN_TOOL", problem)
            memo["tools"] = offered
        specs = {name: ctx.tools[name] for name in memo["tools"] if name in ctx.tools}
        if not specs:
            raise Unavailable("the executor's tools are not known now (is the executor up?)")
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
                call, problem = parse_call(reply, specs)
                transcript.append({"reply": reply, "call": call, "problem": problem})
                if call is not None and "answer" in call:
                    return _end(memo, "", "", answer=call["answer"])
                if call is not None:
                    return _act(memo, call, len(transcript), ctx.input.get("network", False))
            elif result.key.startswith("act."):
                transcript[-1]["observation"] = _observation(result)
        if len(transcript) >= max_steps:
            return _end(memo, "MAX_STEPS", f"no answer within {max_steps} steps")
        return _think(memo, ctx.input, specs)


def _offered(ctx: DecideContext) -> tuple[list[str], str]:
    """The tool names to offer the model, and '' (or a problem with the input's `tools`)."""
    if not ctx.tools:
        raise Unavailable("the executor's tools are not known yet (is the executor up?)")
    asked: list[str] | None = ctx.input.get("tools")
    if asked is None:
        return [name for name in ctx.tools if name not in NOT_OFFERED_BY_DEFAULT], ""
    unknown = [name for name in asked if name not in ctx.tools]
    if unknown:
        has = ", ".join(ctx.tools)
        return [], f"the executor has no tool {', '.join(map(repr, unknown))} (it has: {has})"
    return asked, ""


def _text(result: pb.ActionResult) -> str:
    try:
        return str(json.loads(result.output_json or "{}").get("text", ""))
    except ValueError:
        return ""


def _example(schema: dict[str, Any]) -> str:
    """A call's args as a small model can copy them: {"code": "..."}."""
    shown = {
        name: ["..."] if prop.get("type") == "array" else "..."
        for name, prop in schema.get("properties", {}).items()
    }
    return json.dumps(shown)


def _system(specs: dict[str, pb.ToolSpec]) -> str:
    described = "\n".join(
        f"- {name}: {spec.description} Args: {_example(json.loads(spec.args_schema_json or '{}'))}"
        for name, spec in specs.items()
    )
    return (
        "You solve the user's goal step by step with tools. Tools:\n"
        f"{described}\n"
        'Reply with one JSON object only: {"tool": NAME, "args": {...}} to use a tool (add '
        '"files": {"name": "text"} to give it files), or {"answer": "..."} when you know the answer.'
    )


def _think(memo: dict[str, Any], input: dict[str, Any], specs: dict[str, pb.ToolSpec]) -> pb.Decision:  # noqa: A002
    messages = [("system", _system(specs)), ("user", input["goal"])]
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
    files = {name: text.encode() for name, text in call.get("files", {}).items()}
    action.exec.CopyFrom(
        pb.ExecAction(tool=call["tool"], args_json=json.dumps(call["args"]), files=files, network=network)
    )
    return pb.Decision(memo_json=json.dumps(memo), actions=[action])


def _observation(result: pb.ActionResult) -> str:
    text = (result.stdout + result.stderr).strip()
    if result.output_json and result.output_json.strip() not in ("", "{}"):
        text = (text + "\n" if text else "") + f"Output: {result.output_json}"
    text = text or "(no output)"
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
