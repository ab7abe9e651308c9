"""An ops agent: diagnose a service's config, propose a fix, ask a person, apply it, verify it.

    .venv/bin/agentmesh up --agents examples/agents/ops.py
    .venv/bin/agentmesh submit ops-fix --input @examples/agents/ops_input.json --watch
    .venv/bin/agentmesh input TASK_ID '{"approve": true, "by": "you"}'

The service is a config file handed to the sandbox; every step runs there, with no network. With
`"model"` set (a local model, or one behind the inference worker's OpenAI-compatible backend) the
fix is proposed by the model; without, by rules.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from agentmesh.sdk import AgentError, Context, agent

CHECK = """
import json, sys
config = json.load(open("service.json"))
problems = []
if config.get("workers", 0) < 1:
    problems.append({"key": "workers", "why": "no workers: nothing serves requests", "fix": 4})
if config.get("timeout_s", 0) > 300:
    problems.append({"key": "timeout_s", "why": "requests may hang for minutes", "fix": 30})
if not config.get("log_level") in ("INFO", "WARNING", "ERROR"):
    problems.append({"key": "log_level", "why": "unknown log level", "fix": "INFO"})
print(json.dumps(problems))
"""

APPLY = """
import json
config = json.load(open("service.json"))
for change in json.load(open("changes.json")):
    config[change["key"]] = change["fix"]
json.dump(config, open("service.json", "w"), indent=2, sort_keys=True)
print("applied", len(config))
"""


class Service(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    config: dict
    model: str = ""  # "" (rules), "default" (the embedded model) or a model the inference worker serves


class Approval(BaseModel):
    approve: bool
    by: str = ""


@agent(name="ops-fix", version="1", input=Service)
async def ops_fix(ctx: Context, inp: Service) -> dict:
    """Diagnose a service config, propose a fix, ask for approval, apply it and verify it."""
    files = {"service.json": json.dumps(inp.config)}
    diagnosis = await ctx.exec("python", code=CHECK, files=files, timeout=60)
    problems = json.loads(diagnosis.stdout)
    ctx.emit("diagnosed", {"problems": len(problems)})
    if not problems:
        return {"service": inp.name, "healthy": True, "changes": []}
    changes = await propose(ctx, inp, problems)
    approval: Approval = await ctx.input(
        f"Apply {len(changes)} change(s) to {inp.name}: "
        + "; ".join(f"{c['key']} -> {c['fix']!r} ({c['why']})" for c in changes),
        schema=Approval,
        timeout=24 * 3600,
    )
    if not approval.approve:
        return {"service": inp.name, "healthy": False, "changes": [], "declined_by": approval.by}
    applied = await ctx.exec(
        "python",
        code=APPLY,
        files={**files, "changes.json": json.dumps(changes)},
        output_files=["service.json"],
        timeout=60,
    )
    fixed = json.loads(applied.files["service.json"])
    verify = await ctx.spawn("ops-verify", {"config": fixed})
    if verify.result["problems"]:
        raise AgentError(
            f"still unhealthy after the fix: {verify.result['problems']}", reason="FIX_DID_NOT_HOLD"
        )
    return {
        "service": inp.name,
        "healthy": True,
        "changes": changes,
        "approved_by": approval.by,
        "config": fixed,
    }


async def propose(ctx: Context, inp: Service, problems: list[dict]) -> list[dict]:
    """The rules' fix, or the model's where one is named and its answer parses."""
    if not inp.model:
        return problems
    answer = await ctx.infer(
        "Service config:\n"
        + json.dumps(inp.config)
        + "\nProblems:\n"
        + json.dumps(problems)
        + '\nAnswer with a JSON list of {"key", "fix", "why"} objects, nothing else.',
        model="" if inp.model == "default" else inp.model,
        max_tokens=200,
    )
    try:
        proposed = json.loads(answer.text)
        if isinstance(proposed, list) and all({"key", "fix"} <= set(p) for p in proposed):
            return [{"why": "", **p} for p in proposed]
    except ValueError:
        pass
    ctx.emit("model-unusable", {"text": answer.text[:200]})
    return problems


@agent(name="ops-verify", version="1", input={"type": "object", "required": ["config"]})
async def ops_verify(ctx: Context, inp: dict) -> dict:
    """Run the diagnosis again on a config."""
    out = await ctx.exec("python", code=CHECK, files={"service.json": json.dumps(inp["config"])}, timeout=60)
    return {"problems": json.loads(out.stdout)}
