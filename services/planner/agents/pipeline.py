"""The `pipeline` agent: a DAG of tool steps, as DESIGN.md's pipeline spec says.

Each decision runs every step whose dependencies are settled, concurrently. A step that fails
(after its retries) fails the pipeline unless it sets `continue_on_error`; steps that depend on a
failed step are skipped. The memo holds each step's outcome; the result is
`{"steps": {ID: {status, exit_code, stdout, stderr, output, attempts, cost}}}`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from protos.agentmesh.v1 import common_pb2 as pb
from services.planner.registry import DecideContext, refuse_input
from services.runtime.errors import InvalidArgument
from services.runtime.wire import cost_to_dict

EXEC_TOOLS = frozenset({"echo", "python", "shell", "pytest", "scan"})
TOOLS = EXEC_TOOLS | {"infer", "embed", "approval", "spawn"}
# spawn: child tasks, one per entry of args.inputs, or args.template once per shard of
# args.shard.items; joined as args.join says.
JOINS = {"all": pb.JOIN_MODE_ALL, "any": pb.JOIN_MODE_ANY, "fail_fast": pb.JOIN_MODE_FAIL_FAST}
MAX_CHILDREN = 256
MAX_SHARD_ITEMS = 100_000
# Where a pipeline child's exec steps find their shard: a file in each one's workspace.
SHARD_FILE = "shard.json"
STEP_FIELDS = frozenset(
    {
        "id", "tool", "args", "files", "depends_on", "retry", "timeout_s", "continue_on_error", "network",
        "isolation", "limits", "on_ambiguous", "share_identical",
    }
)  # fmt: skip
# An exec step's sandbox: the isolation it requires, and limits lower than the executor's.
ISOLATION_LEVELS = ("full", "contained")
LIMIT_FIELDS = {
    "memory_bytes": 1 << 44, "pids": 1 << 20, "cpu_millicores": 1 << 20, "cpu_seconds": 1 << 24,
    "workspace_bytes": 1 << 44,
}  # fmt: skip
STEP_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_STEPS = 1000
MAX_TIMEOUT_S = 24 * 3600.0
# What each tool needs in `args`: field -> accepted types.
# Optional args that the action mapping converts: field -> (accepted types, lowest, highest).
NUMERIC_ARGS: dict[str, dict[str, tuple[tuple[type, ...], float, float]]] = {
    "infer": {
        "max_tokens": ((int,), 1, 1_000_000),
        "temperature": ((int, float), 0.0, 100.0),
        "top_p": ((int, float), 0.0, 1.0),
        "top_k": ((int,), 0, 1_000_000),
        "seed": ((int,), 0, 2**63 - 1),
    },
    "approval": {"timeout_s": ((int, float), 0.0, MAX_TIMEOUT_S)},
}
REQUIRED_ARGS: dict[str, dict[str, tuple[type, ...]]] = {
    "python": {"code": (str,)},
    "shell": {"command": (str,)},
    "embed": {"texts": (list,)},
}

PENDING, OK, FAILED, SKIPPED = "pending", "ok", "failed", "skipped"
# Asked for, no result yet (the memo's view between two decisions taken while steps run).
RUNNING = "running"
# A step whose worker died mid-run, waiting for a person to say whether to run it again.
ASKING = "asking"
CONFIRM = "#confirm"  # the key suffix of that question's await_input action
# What a step does when its worker is lost mid-run (it may have done part of its work).
AMBIGUOUS = {
    "rerun": pb.AMBIGUOUS_POLICY_RERUN,
    "fail": pb.AMBIGUOUS_POLICY_FAIL,
    "ask": pb.AMBIGUOUS_POLICY_FAIL,  # the coordinator fails it; this agent then asks
}
STATUS_OF_RESULT = {pb.ACTION_STATUS_OK: OK}


def check_file_name(name: Any) -> str | None:
    """Why a declared workspace file name is unsafe, or None if it is fine."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if "\x00" in name:
        return "must not contain NUL"
    if name.startswith("/"):
        return "must be relative, not absolute"
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "must not contain '..', '.' or empty path parts"
    if len(name) > 255:
        return "longer than 255 characters"
    return None


def _validate_step(index: int, step: Any, violations: list[tuple[str, str]]) -> None:
    where = f"steps[{index}]"
    if not isinstance(step, dict):
        violations.append((where, "must be an object"))
        return
    unknown = set(step) - STEP_FIELDS
    if unknown:
        violations.append((where, f"unknown fields: {', '.join(sorted(unknown))}"))
    if not isinstance(step.get("id"), str) or not STEP_ID.match(step["id"]):
        violations.append((f"{where}.id", "required; 1-64 characters of A-Z a-z 0-9 _ . -"))
    tool = step.get("tool")
    if tool not in TOOLS:
        violations.append((f"{where}.tool", f"must be one of {', '.join(sorted(TOOLS))}"))
    args = step.get("args", {})
    if not isinstance(args, dict):
        violations.append((f"{where}.args", "must be an object"))
    else:
        for name, types in REQUIRED_ARGS.get(tool, {}).items():
            if not isinstance(args.get(name), types):
                violations.append((f"{where}.args.{name}", f"required, {types[0].__name__}"))
        for name, (types, low, high) in NUMERIC_ARGS.get(tool, {}).items():
            if name in args:
                value = args[name]
                if isinstance(value, bool) or not isinstance(value, types) or not low <= value <= high:
                    kind = "integer" if types == (int,) else "number"
                    violations.append((f"{where}.args.{name}", f"{kind} from {low:g} to {high:g}"))
        if tool == "spawn":
            _validate_spawn(where, args, violations)
        if tool == "infer":
            stop = args.get("stop", [])
            if not isinstance(stop, list) or not all(isinstance(v, str) for v in stop):
                violations.append((f"{where}.args.stop", "must be a list of strings"))
            messages = args.get("messages", [])
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                violations.append((f"{where}.args.messages", "must be a list of {role, content} objects"))
        if (
            tool == "infer"
            and not isinstance(args.get("prompt"), str)
            and not isinstance(args.get("messages"), list)
        ):
            violations.append((f"{where}.args", "infer needs `prompt` (string) or `messages` (list)"))
    files = step.get("files", {})
    if not isinstance(files, dict):
        violations.append((f"{where}.files", "must be an object of name -> content"))
    else:
        for name, content in files.items():
            problem = check_file_name(name)
            if problem:
                violations.append((f"{where}.files[{name!r}]", problem))
            if not isinstance(content, str):
                violations.append((f"{where}.files[{name!r}]", "content must be a string"))
    deps = step.get("depends_on", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        violations.append((f"{where}.depends_on", "must be a list of step ids"))
    retry = step.get("retry", {})
    if not isinstance(retry, dict) or set(retry) - {"attempts", "backoff_s", "max_backoff_s"}:
        violations.append((f"{where}.retry", "must be {attempts, backoff_s, max_backoff_s}"))
    else:
        attempts = retry.get("attempts", 1)
        if not isinstance(attempts, int) or isinstance(attempts, bool) or not 1 <= attempts <= 100:
            violations.append((f"{where}.retry.attempts", "integer from 1 to 100"))
        for name in ("backoff_s", "max_backoff_s"):
            value = retry.get(name, 0)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 3600:
                violations.append((f"{where}.retry.{name}", "number from 0 to 3600"))
    timeout = step.get("timeout_s", 0)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 <= timeout <= MAX_TIMEOUT_S:
        violations.append((f"{where}.timeout_s", f"number from 0 to {MAX_TIMEOUT_S:g}"))
    for flag in ("continue_on_error", "network", "share_identical"):
        if not isinstance(step.get(flag, False), bool):
            violations.append((f"{where}.{flag}", "must be true or false"))
    if step.get("on_ambiguous", "rerun") not in AMBIGUOUS:
        violations.append((f"{where}.on_ambiguous", "rerun, fail or ask"))
    if step.get("isolation", "full") not in ISOLATION_LEVELS:
        violations.append((f"{where}.isolation", " or ".join(ISOLATION_LEVELS)))
    limits = step.get("limits", {})
    if not isinstance(limits, dict) or set(limits) - set(LIMIT_FIELDS):
        violations.append((f"{where}.limits", "an object of " + ", ".join(LIMIT_FIELDS)))
    else:
        for name, value in limits.items():
            top = LIMIT_FIELDS[name]
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                violations.append((f"{where}.limits.{name}", f"integer from 1 to {top}"))


def _validate_spawn(where: str, args: dict[str, Any], violations: list[tuple[str, str]]) -> None:
    agent = args.get("agent", "pipeline")
    if not isinstance(agent, str) or not agent:
        violations.append((f"{where}.args.agent", "the children's agent (a name)"))
        return
    if args.get("join", "all") not in JOINS:
        violations.append((f"{where}.args.join", "all, any or fail_fast"))
    if ("inputs" in args) == ("shard" in args):
        violations.append((f"{where}.args", "either inputs (one per child) or shard with template"))
        return
    if "shard" in args:
        inputs = _validate_shard(where, args, agent, violations)
        if inputs is None:
            return
    else:
        inputs = args["inputs"]
        if not isinstance(inputs, list) or not 1 <= len(inputs) <= MAX_CHILDREN:
            violations.append((f"{where}.args.inputs", f"a list of 1 to {MAX_CHILDREN} child inputs"))
            return
    if agent == "pipeline":  # children of our own kind are checked now, not when they start
        for index, child in enumerate(inputs):
            try:
                PipelineAgent().validate(child)
            except InvalidArgument as exc:
                field = "template" if "shard" in args else f"inputs[{index}]"
                violations.append((f"{where}.args.{field}", exc.message))
                break


def _validate_shard(
    where: str, args: dict[str, Any], agent: str, violations: list[tuple[str, str]]
) -> list[Any] | None:
    """The children's inputs of a sharded spawn (only the first, which stands for the rest), or None
    after naming what is wrong."""
    shard, template = args["shard"], args.get("template")
    count_before = len(violations)
    if not isinstance(shard, dict) or set(shard) - {"items", "size", "count"}:
        violations.append((f"{where}.args.shard", "an object: items, and size or count"))
        return None
    items = shard.get("items")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_SHARD_ITEMS:
        violations.append((f"{where}.args.shard.items", f"a list of 1 to {MAX_SHARD_ITEMS} items"))
    if ("size" in shard) == ("count" in shard):
        violations.append((f"{where}.args.shard", "size (items per child) or count (children), one of them"))
    for name in ("size", "count"):
        value = shard.get(name, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            violations.append((f"{where}.args.shard.{name}", "a positive integer"))
    if not isinstance(template, dict):
        violations.append((f"{where}.args.template", "the input every child gets, with its shard"))
    into = args.get("into")
    if agent != "pipeline" and (not isinstance(into, str) or not into):
        violations.append((f"{where}.args.into", "the input field that receives each child's shard"))
    if len(violations) > count_before:
        return None
    shards = _shards(items, shard)
    if len(shards) > MAX_CHILDREN:
        violations.append((f"{where}.args.shard", f"{len(shards)} children; at most {MAX_CHILDREN}"))
        return None
    if agent == "pipeline":
        for step in template.get("steps", []):
            if isinstance(step, dict) and SHARD_FILE in (step.get("files") or {}):
                violations.append(
                    (f"{where}.args.template", f"a step declares {SHARD_FILE}, the shard's file")
                )
                return None
    return [_with_shard(template, shards[0], agent, into)]


def _shards(items: list[Any], shard: dict[str, Any]) -> list[list[Any]]:
    """Consecutive slices: `size` items each, or `count` slices as even as they go."""
    if "size" in shard:
        size = shard["size"]
        return [items[i : i + size] for i in range(0, len(items), size)]
    count = min(shard["count"], len(items))
    return [items[len(items) * i // count : len(items) * (i + 1) // count] for i in range(count)]


def _with_shard(template: dict[str, Any], part: list[Any], agent: str, into: str | None) -> dict[str, Any]:
    """One child's input: the template, with the shard in every exec step's workspace as shard.json
    (a pipeline child) or in the input field `into` (any other agent)."""
    child = json.loads(json.dumps(template))  # a deep copy of plain JSON
    if agent != "pipeline":
        child[into] = part  # type: ignore[index]
        return child
    for step in child.get("steps", []):
        if isinstance(step, dict) and step.get("tool") in EXEC_TOOLS:
            files = step.setdefault("files", {})
            if isinstance(files, dict):
                files[SHARD_FILE] = json.dumps(part)
    return child


def _child_inputs(args: dict[str, Any]) -> list[Any]:
    if "inputs" in args:
        return args["inputs"]
    agent = str(args.get("agent", "pipeline"))
    shards = _shards(args["shard"]["items"], args["shard"])
    return [_with_shard(args["template"], part, agent, args.get("into")) for part in shards]


def _find_cycle(steps: list[dict[str, Any]]) -> str | None:
    """A step on a dependency cycle, or None. Kahn's algorithm: iterative, so a 1,000-step chain in
    any order costs no recursion depth."""
    deps = {s["id"]: set(s.get("depends_on", [])) for s in steps}
    dependents: dict[str, list[str]] = {sid: [] for sid in deps}
    for sid, needs in deps.items():
        for dep in needs:
            dependents[dep].append(sid)
    ready = [sid for sid, needs in deps.items() if not needs]
    left = {sid: len(needs) for sid, needs in deps.items()}
    while ready:
        sid = ready.pop()
        for dependent in dependents[sid]:
            left[dependent] -= 1
            if left[dependent] == 0:
                ready.append(dependent)
    stuck = [sid for sid, count in left.items() if count > 0]
    return stuck[0] if stuck else None


class PipelineAgent:
    name = "pipeline"
    description = (
        "A DAG of tool steps (echo, python, shell, pytest, scan, infer, embed, approval) with retries"
    )

    def validate(self, input: Any) -> None:  # noqa: A002
        if not isinstance(input, dict) or set(input) != {"steps"}:
            raise InvalidArgument(
                'pipeline input must be {"steps": [...]}', field_violations=[("input", "must be {steps}")]
            )
        steps = input["steps"]
        if not isinstance(steps, list) or not 1 <= len(steps) <= MAX_STEPS:
            raise InvalidArgument(
                f"steps must be a list of 1 to {MAX_STEPS} steps",
                field_violations=[("input.steps", "1 to 1000 steps")],
            )
        violations: list[tuple[str, str]] = []
        for index, step in enumerate(steps):
            _validate_step(index, step, violations)
        if not violations:
            ids = [s["id"] for s in steps]
            if len(set(ids)) != len(ids):
                violations.append(("input.steps", "step ids must be unique"))
            known = set(ids)
            for index, step in enumerate(steps):
                for dep in step.get("depends_on", []):
                    if dep not in known:
                        violations.append((f"steps[{index}].depends_on", f"unknown step {dep!r}"))
            if not violations:
                cycle = _find_cycle(steps)
                if cycle:
                    violations.append(("input.steps", f"dependency cycle through {cycle!r}"))
        refuse_input("pipeline", violations)

    def decide(self, ctx: DecideContext) -> pb.Decision:
        steps: list[dict[str, Any]] = ctx.input["steps"]
        memo: dict[str, Any] = ctx.memo or {"steps": {s["id"]: {"status": PENDING} for s in steps}}
        outcomes: dict[str, dict[str, Any]] = memo["steps"]
        by_id = {s["id"]: s for s in steps}
        for result in ctx.results:
            if result.key.endswith(CONFIRM):
                _answered(outcomes[result.key[: -len(CONFIRM)]], result)
                continue
            outcome = _outcome(result)
            if outcome.get("error", {}).get("reason") == "AMBIGUOUS_FAILURE":
                if by_id[result.key].get("on_ambiguous") == "ask":
                    outcome["status"] = ASKING
            outcomes[result.key] = outcome
        changed = True
        while changed:  # skip steps whose dependencies failed, transitively
            changed = False
            for step in steps:
                sid = step["id"]
                if outcomes[sid]["status"] != PENDING:
                    continue
                for dep in step.get("depends_on", []):
                    dep_out = outcomes[dep]
                    blocked = dep_out["status"] == SKIPPED or (
                        dep_out["status"] == FAILED and not by_id[dep].get("continue_on_error", False)
                    )
                    if blocked:
                        outcomes[sid] = {"status": SKIPPED, "reason": f"dependency {dep} did not succeed"}
                        changed = True
                        break
        ready = [
            s
            for s in steps
            if outcomes[s["id"]]["status"] == PENDING
            and all(outcomes[d]["status"] in (OK, FAILED) for d in s.get("depends_on", []))
        ]
        asking = [sid for sid, out in outcomes.items() if out["status"] == ASKING and not out.get("asked")]
        for step in ready:
            outcomes[step["id"]]["status"] = RUNNING
        for sid in asking:
            outcomes[sid]["asked"] = True
        # Asked again as each step settles while a pending step waits on a running one, so that
        # it starts as soon as its own dependencies are done; else once everything running has
        # settled (a plain fan-out: one decision, not one per step).
        running = {sid for sid, out in outcomes.items() if out["status"] == RUNNING or out.get("asked")}
        each = any(
            outcomes[s["id"]]["status"] == PENDING and running.intersection(s.get("depends_on", ()))
            for s in steps
        )
        decision = pb.Decision(memo_json=json.dumps(memo), on_each_settle=each)
        if ready or asking:
            decision.actions.extend(_action(step) for step in ready)
            decision.actions.extend(_confirm(sid, outcomes[sid]) for sid in asking)
            return decision
        if running:
            # Nothing new to start: not worth a checkpoint. The coordinator hands these results in
            # again with the next decision (this one's memo is dropped with it).
            decision.nothing_new = True
            return decision
        failed = [
            sid
            for sid, out in outcomes.items()
            if out["status"] == FAILED and not by_id[sid].get("continue_on_error", False)
        ]
        result = json.dumps({"steps": outcomes})
        if failed:
            decision.final.CopyFrom(
                pb.Final(
                    state=pb.TASK_STATE_FAILED,
                    result_json=result,
                    error=pb.TaskError(
                        reason="STEP_FAILED",
                        message=f"step(s) failed: {', '.join(failed)}",
                        details_json=json.dumps({"steps": failed}),
                    ),
                )
            )
        else:
            decision.final.CopyFrom(pb.Final(state=pb.TASK_STATE_SUCCEEDED, result_json=result))
        return decision


def _confirm(sid: str, outcome: dict[str, Any]) -> pb.Action:
    action = pb.Action(key=sid + CONFIRM)
    action.await_input.CopyFrom(
        pb.AwaitInputAction(
            prompt=(
                f"Step {sid} was running when its worker was lost ({outcome['error']['message']}). "
                'Run it again? Send {"rerun": true} or {"rerun": false}.'
            )
        )
    )
    return action


def _answered(outcome: dict[str, Any], result: pb.ActionResult) -> None:
    """A person's answer to _confirm: run the step again, or let it fail."""
    answer = json.loads(result.output_json) if result.output_json else None
    outcome.pop("asked", None)
    if result.status == pb.ACTION_STATUS_OK and isinstance(answer, dict) and answer.get("rerun") is True:
        reruns = outcome.get("reruns", 0) + 1
        outcome.clear()
        outcome.update({"status": PENDING, "reruns": reruns})
        return
    outcome["status"] = FAILED
    outcome["error"] = {
        "reason": "AMBIGUOUS_FAILURE",
        "message": f"not run again after its worker was lost (answer: {json.dumps(answer)})",
    }


def _outcome(result: pb.ActionResult) -> dict[str, Any]:
    output = json.loads(result.output_json) if result.output_json else None
    status = OK if result.status == pb.ACTION_STATUS_OK else FAILED
    if status == OK and isinstance(output, dict) and output.get("approved") is False:
        status = FAILED  # an approval answered with {"approved": false}
    outcome: dict[str, Any] = {
        "status": status,
        "exit_code": result.exit_code,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "output": output,
        "attempts": result.attempts,
        "cost": cost_to_dict(result.cost),
    }
    if result.error.reason:
        outcome["error"] = {"reason": result.error.reason, "message": result.error.message}
    if result.truncated:
        outcome["truncated"] = True
    return outcome


def _action(step: dict[str, Any]) -> pb.Action:
    retry = step.get("retry", {})
    action = pb.Action(
        key=step["id"],
        timeout_s=float(step.get("timeout_s", 0)),
        share_identical=step.get("share_identical", False),
        retry=pb.RetryPolicy(
            attempts=retry.get("attempts", 1),
            backoff_s=float(retry.get("backoff_s", 0)),
            max_backoff_s=float(retry.get("max_backoff_s", 0)),
            on_ambiguous=AMBIGUOUS.get(step.get("on_ambiguous", ""), pb.AMBIGUOUS_POLICY_UNSPECIFIED),
        ),
    )
    tool, args = step["tool"], step.get("args", {})
    if tool in EXEC_TOOLS:
        action.exec.CopyFrom(
            pb.ExecAction(
                tool=tool,
                args_json=json.dumps(args),
                network=step.get("network", False),
                files={name: content.encode() for name, content in step.get("files", {}).items()},
                isolation=step.get("isolation", "full"),
                limits=pb.ResourceLimits(**step.get("limits", {})),
            )
        )
    elif tool == "infer":
        action.infer.CopyFrom(
            pb.InferAction(
                model=str(args.get("model", "")),
                prompt=str(args.get("prompt", "")),
                messages=[
                    pb.ChatMessage(role=str(m.get("role", "user")), content=str(m.get("content", "")))
                    for m in args.get("messages", [])
                    if isinstance(m, dict)
                ],
                max_tokens=int(args.get("max_tokens", 128)),
                temperature=float(args.get("temperature", 0.0)),
                top_p=float(args.get("top_p", 1.0)),
                top_k=int(args.get("top_k", 0)),
                seed=int(args.get("seed", 0)),
                stop=[str(s) for s in args.get("stop", [])],
            )
        )
    elif tool == "embed":
        action.embed.CopyFrom(
            pb.EmbedAction(model=str(args.get("model", "")), texts=[str(t) for t in args["texts"]])
        )
    elif tool == "spawn":
        agent = str(args.get("agent", "pipeline"))
        action.spawn.CopyFrom(
            pb.SpawnAction(
                children=[
                    pb.ChildSpec(agent=agent, input_json=json.dumps(child)) for child in _child_inputs(args)
                ],
                join=JOINS[args.get("join", "all")],
            )
        )
    else:  # approval
        action.await_input.CopyFrom(
            pb.AwaitInputAction(
                prompt=str(args.get("prompt", "approve?")), timeout_s=float(args.get("timeout_s", 0))
            )
        )
    return action
