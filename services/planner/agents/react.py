"""The `react` agent, as an SDK agent: the model picks the next tool call, as JSON, until it gives an
answer.

The tools are the executor's own, as it declares them (`ctx.tools()`, read once at the start and
recorded, so a replay offers the same ones): input `tools` names the ones to offer, and by default
every tool but `echo` is offered. The model sees each tool's description and args schema.

Each step: ask the model (infer), then run the tool call it chose in a fresh sandbox (exec) and show
it the output. A call is `{"tool": NAME, "args": {...}, "files"?: {NAME: TEXT}}` (files are put in
the tool's working directory) or `{"answer": TEXT}`. A reply that is not a valid call (no JSON, an
unknown tool, args that break the tool's schema) is fed back with what was wrong and costs a step:
a small model's malformed JSON never crashes the task. The task SUCCEEDS with the model's answer, or
FAILS with reason MAX_STEPS and the whole transcript (UNKNOWN_TOOL when `tools` names one the
executor does not have).
"""

from __future__ import annotations

import json
from typing import Any

from agentmesh.sdk import AgentError, Context, ExecResult, Tool, agent

# Offered only when asked for by name: it runs nothing, so a model learns nothing from it.
NOT_OFFERED_BY_DEFAULT = frozenset({"echo"})
OBSERVATION_CHARS = 1500
STEP_TIMEOUT_S = 120.0
GEN_TIMEOUT_S = 600.0
MAX_FILES = 20

INPUT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["goal"],
    "properties": {
        "goal": {"type": "string", "pattern": r"\S", "description": "what the model is to find out or do"},
        "tools": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
            "uniqueItems": True,
            "description": "the executor's tools to offer (default: all but echo)",
        },
        "max_steps": {"type": "integer", "minimum": 1, "maximum": 50, "default": 8},
        "model": {"type": "string", "default": "", "description": "the model to ask ('': the default)"},
        "max_tokens": {"type": "integer", "minimum": 16, "maximum": 4096, "default": 256},
        "network": {"type": "boolean", "default": False, "description": "tool calls may reach the network"},
    },
}


@agent(
    name="react",
    version="2",
    input=INPUT,
    description="A model picks tool calls (the executor's tools, in a sandbox) until it can answer the goal",
)
async def react(ctx: Context, inp: dict[str, Any]) -> dict[str, Any]:
    transcript: list[dict[str, Any]] = []

    def end(reason: str, message: str) -> AgentError:
        return AgentError(message, reason=reason, result=_result(ctx, transcript, None))

    specs = _offered(ctx.tools(), inp.get("tools"))
    if isinstance(specs, str):
        raise end("UNKNOWN_TOOL", specs)
    while len(transcript) < inp["max_steps"]:
        thought = await ctx.infer(
            messages=_messages(inp["goal"], specs, transcript),
            model=inp["model"],
            max_tokens=inp["max_tokens"],
            temperature=0.0,
            timeout=GEN_TIMEOUT_S,
            key=f"think.{len(transcript) + 1}",
            check=False,
        )
        if not thought.ok:
            raise end("GENERATION_FAILED", f"the model could not generate: {thought.message}")
        call, problem = parse_call(thought.text, specs)
        step: dict[str, Any] = {"reply": thought.text, "call": call, "problem": problem}
        transcript.append(step)
        if call is not None and "answer" in call:
            return _result(ctx, transcript, call["answer"])
        if call is not None:
            done = await ctx.exec(
                call["tool"],
                args=call["args"],
                files=call.get("files"),
                network=inp["network"],
                timeout=STEP_TIMEOUT_S,
                key=f"act.{len(transcript)}",
                check=False,
            )
            step["observation"] = _observation(done)
    raise end("MAX_STEPS", f"no answer within {inp['max_steps']} steps")


def _result(ctx: Context, transcript: list[dict[str, Any]], answer: str | None) -> dict[str, Any]:
    tokens = {"in": ctx.usage.tokens_in, "out": ctx.usage.tokens_out}
    return {"answer": answer, "steps": transcript, "tokens": tokens}


def _offered(tools: dict[str, Tool], asked: list[str] | None) -> dict[str, Tool] | str:
    """The tools to offer the model, or what is wrong with the input's `tools`."""
    if asked is None:
        return {name: tool for name, tool in tools.items() if name not in NOT_OFFERED_BY_DEFAULT}
    unknown = [name for name in asked if name not in tools]
    if unknown:
        return f"the executor has no tool {', '.join(map(repr, unknown))} (it has: {', '.join(tools)})"
    return {name: tools[name] for name in asked}


# -- the model's replies --------------------------------------------------------------------------


def parse_call(text: str, specs: dict[str, Tool]) -> tuple[dict[str, Any] | None, str]:
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


def _args_problem(tool: Tool, args: Any) -> str:
    """What is wrong with `args` by the tool's declared JSON Schema; '' when nothing is."""
    from jsonschema import Draft202012Validator

    errors = sorted(
        Draft202012Validator(tool.args_schema).iter_errors(args),
        key=lambda e: [str(p) for p in e.schema_path],
    )
    # All of them (a few): a missing "code" and an unexpected "command" are one mistake, told whole.
    return "; ".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" if e.absolute_path else e.message
        for e in errors[:3]
    )


# -- what the model is shown ----------------------------------------------------------------------


def _example(schema: dict[str, Any]) -> str:
    """A call's args as a small model can copy them: {"code": "..."}."""
    shown = {
        name: ["..."] if prop.get("type") == "array" else "..."
        for name, prop in schema.get("properties", {}).items()
    }
    return json.dumps(shown)


def _system(specs: dict[str, Tool]) -> str:
    described = "\n".join(
        f"- {name}: {tool.description} Args: {_example(tool.args_schema)}" for name, tool in specs.items()
    )
    return (
        "You solve the user's goal step by step with tools. Tools:\n"
        f"{described}\n"
        'Reply with one JSON object only: {"tool": NAME, "args": {...}} to use a tool (add '
        '"files": {"name": "text"} to give it files), or {"answer": "..."} when you know the answer.'
    )


def _messages(goal: str, specs: dict[str, Tool], transcript: list[dict[str, Any]]) -> list[dict[str, str]]:
    messages = [("system", _system(specs)), ("user", goal)]
    for step in transcript:
        messages.append(("assistant", step["reply"]))
        if step["problem"]:
            messages.append(
                ("user", f"That was not a valid tool call: {step['problem']}. Reply with JSON only.")
            )
        elif "observation" in step:
            messages.append(("user", f"Result:\n{step['observation']}"))
    return [{"role": role, "content": content} for role, content in messages]


def _observation(result: ExecResult) -> str:
    text = (result.stdout + result.stderr).strip()
    if result.output not in (None, {}, ""):
        text = (text + "\n" if text else "") + f"Output: {json.dumps(result.output)}"
    text = text or "(no output)"
    if len(text) > OBSERVATION_CHARS:
        text = text[:OBSERVATION_CHARS] + "\n[truncated]"
    status = "ok" if result.ok else (result.message or "failed")
    return f"[{status}, exit {result.exit_code}]\n{text}"
