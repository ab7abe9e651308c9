"""The `codegen` agent: the seed's case study. Generate code with a model, test it in the sandbox, feed
failures back, scan the winner for vulnerabilities, ask for a fix of what the scan finds.

One attempt = `candidates` child tasks at once, each generating one candidate (the generations
batch together on the inference worker) and testing it in its own sandbox as soon as it is written;
the first child to pass wins and the others are cancelled, mid-generation or mid-test (an any-join
of a `spawn`). With one candidate the task does it itself: generate, then test. When none passes,
the failing tests of the best candidate go back into the next prompt, up to `max_attempts`. The
winner is scanned (bandit, and semgrep where installed);
high-severity findings get `max_fixes` rounds of "fix these issues", each re-tested, and a fix is
kept only if it still passes.

Phases, kept in the memo between decisions (the planner holds no state):
  (generate -> test | fan out) -> (scan -> [fix -> retest -> scan]...) -> done
The result: {passed, code, attempts, reports (every candidate of every attempt: its code, its test
outcome), scan, fixes, tokens}.
"""

from __future__ import annotations

import json
from typing import Any

from protos.agentmesh.v1 import common_pb2 as pb
from services.planner.agents import codeblocks
from services.planner.registry import DecideContext, refuse_input
from services.runtime.errors import InvalidArgument

SOLUTION = "solution.py"
TESTS = "test_solution.py"
SYSTEM = "You are an expert Python programmer. You write correct, simple, self-contained code."
ASK = "Reply with the complete code in one ```python code block."
# Generation stops at the end of the first code block: the prose small models add after it is tokens
# (time, money) for nothing, and the slowest candidate's tail is what a batch of candidates waits for.
# A fence that opens a block has a language after it (```python), so only a closing one matches.
STOP = ["\n```\n"]
LIMITS = {
    "max_attempts": (1, 10, 3),
    "candidates": (1, 8, 2),
    "max_tokens": (16, 4096, 384),
    "max_fixes": (0, 5, 1),
}
FEEDBACK_CHARS = 1200
# Test-run failures that say nothing about the code.
INFRASTRUCTURE = frozenset({"TOOL_UNAVAILABLE", "ISOLATION_UNAVAILABLE", "WORKSPACE_ERROR", "UNAVAILABLE"})
TEST_TIMEOUT_S = 60.0
GEN_TIMEOUT_S = 600.0


def _int_field(input: dict[str, Any], name: str, violations: list[tuple[str, str]]) -> None:  # noqa: A002
    low, high, _ = LIMITS[name]
    value = input.get(name, low)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        violations.append((f"input.{name}", f"integer from {low} to {high}"))


class CodegenAgent:
    name = "codegen"
    description = (
        "Write code for a spec with a model, test candidates in parallel sandboxes, feed failures back, "
        "scan the winner for vulnerabilities and fix them"
    )

    def validate(self, input: Any) -> None:  # noqa: A002
        if not isinstance(input, dict):
            raise InvalidArgument(
                "codegen input must be an object", field_violations=[("input", "an object")]
            )
        violations: list[tuple[str, str]] = []
        known = {
            "spec", "tests", "language", "entrypoint", "model", "scan", "temperature", "seed", "feedback",
            *LIMITS,
        }  # fmt: skip
        for name in sorted(set(input) - known):
            violations.append((f"input.{name}", "unknown field"))
        for name in ("spec", "tests"):
            if not isinstance(input.get(name), str) or not input[name].strip():
                violations.append((f"input.{name}", "a non-empty string"))
        if input.get("language", "python") != "python":
            violations.append(("input.language", "only python"))
        entrypoint = input.get("entrypoint", "")
        if not isinstance(entrypoint, str) or (entrypoint and not entrypoint.isidentifier()):
            violations.append(("input.entrypoint", "a Python identifier"))
        if not isinstance(input.get("model", ""), str):
            violations.append(("input.model", "a model name"))
        if not isinstance(input.get("scan", True), bool):
            violations.append(("input.scan", "true or false"))
        temperature = input.get("temperature", 0.7)
        if (
            not isinstance(temperature, int | float)
            or isinstance(temperature, bool)
            or not 0 <= temperature <= 2
        ):
            violations.append(("input.temperature", "number from 0 to 2"))
        for name in LIMITS:
            _int_field(input, name, violations)
        seed = input.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**62:
            violations.append(("input.seed", "a non-negative integer"))
        feedback = input.get("feedback")
        if feedback is not None and not (
            isinstance(feedback, dict) and all(isinstance(feedback.get(k), str) for k in ("code", "failures"))
        ):
            violations.append(("input.feedback", "{code, failures}: a previous attempt to improve on"))
        refuse_input("codegen input", violations)

    def decide(self, ctx: DecideContext) -> pb.Decision:
        opts = _Options(ctx.input)
        memo: dict[str, Any] = ctx.memo or {"phase": "start", "attempt": 0, "reports": [], "fixes": []}
        results = {r.key: r for r in ctx.results}
        for result in ctx.results:
            memo.setdefault("tokens", {"in": 0, "out": 0})
            memo["tokens"]["in"] += result.cost.tokens_in
            memo["tokens"]["out"] += result.cost.tokens_out
        step = {
            "start": _next_attempt,
            "fanout": _after_fanout,
            "generate": _after_generate,
            "test": _after_test,
            "scan": _after_scan,
            "fix": _after_fix,
            "retest": _after_retest,
        }[memo["phase"]]
        return step(opts, memo, results)


class _Options:
    def __init__(self, input: dict[str, Any]) -> None:  # noqa: A002
        self.spec: str = input["spec"]
        self.tests: str = input["tests"]
        self.entrypoint: str = input.get("entrypoint", "")
        self.model: str = input.get("model", "")
        self.scan: bool = input.get("scan", True)
        self.temperature = float(input.get("temperature", 0.7))
        self.max_attempts: int = input.get("max_attempts", LIMITS["max_attempts"][2])
        self.candidates: int = input.get("candidates", LIMITS["candidates"][2])
        self.max_tokens: int = input.get("max_tokens", LIMITS["max_tokens"][2])
        self.max_fixes: int = input.get("max_fixes", LIMITS["max_fixes"][2])
        # Set by a parent codegen task for each of its candidates: sample with exactly this seed and
        # temperature (no greedy first candidate), starting from the parent's feedback.
        self.seed: int | None = input.get("seed")
        self.feedback: dict[str, str] | None = input.get("feedback")

    def request(self) -> str:
        named = f"\nThe function must be named `{self.entrypoint}`." if self.entrypoint else ""
        return f"{self.spec}{named}\n{ASK}"


# -- phases: each takes the results of the previous decision and returns the next decision ----------


def _next_attempt(opts: _Options, memo: dict[str, Any], _: dict[str, pb.ActionResult]) -> pb.Decision:
    if memo["attempt"] >= opts.max_attempts:
        return _finish(memo, passed=False)
    memo["attempt"] += 1
    attempt = memo["attempt"]
    if opts.candidates > 1:
        return _fan_out(opts, memo, attempt)
    messages = [("system", SYSTEM), ("user", opts.request())]
    feedback = memo.get("feedback") or opts.feedback
    if feedback:
        messages += [
            ("assistant", f"```python\n{feedback['code']}```"),
            ("user", f"That code fails these tests:\n{feedback['failures']}\nFix it. {ASK}"),
        ]
    actions = []
    for index in range(opts.candidates):
        # The first candidate of the first attempt is greedy (the model's best guess); the rest sample.
        greedy = attempt == 1 and index == 0 and opts.seed is None
        seed = opts.seed if opts.seed is not None else attempt * 1000 + index
        actions.append(
            _infer(
                f"gen.{attempt}.{index}",
                opts,
                messages,
                temperature=0.0 if greedy else opts.temperature,
                seed=seed,
            )
        )
    memo["phase"] = "generate"
    return pb.Decision(memo_json=json.dumps(memo), actions=actions)


def _fan_out(opts: _Options, memo: dict[str, Any], attempt: int) -> pb.Decision:
    """One child codegen task per candidate, joined as any: the first to pass cancels the rest."""
    base = {"spec": opts.spec, "tests": opts.tests, "model": opts.model, "max_tokens": opts.max_tokens}
    if opts.entrypoint:
        base["entrypoint"] = opts.entrypoint
    feedback = memo.get("feedback") or opts.feedback
    if feedback:
        base["feedback"] = feedback
    children = []
    for index in range(opts.candidates):
        greedy = attempt == 1 and index == 0
        child = {
            **base,
            "candidates": 1,
            "max_attempts": 1,
            "scan": False,
            "max_fixes": 0,
            "temperature": 0.0 if greedy else opts.temperature,
            "seed": attempt * 1000 + index,
        }
        children.append(pb.ChildSpec(agent="codegen", input_json=json.dumps(child)))
    action = pb.Action(key=f"fan.{attempt}")
    action.spawn.CopyFrom(pb.SpawnAction(children=children, join=pb.JOIN_MODE_ANY))
    memo["phase"] = "fanout"
    return pb.Decision(memo_json=json.dumps(memo), actions=[action])


def _after_fanout(opts: _Options, memo: dict[str, Any], results: dict[str, pb.ActionResult]) -> pb.Decision:
    attempt = memo["attempt"]
    result = results.get(f"fan.{attempt}")
    children = json.loads(result.output_json)["children"] if result is not None and result.output_json else []
    report: dict[str, Any] = {"attempt": attempt, "candidates": []}
    memo["reports"].append(report)
    winner = None
    reasons = []
    for index, child in enumerate(children):
        outcome = child.get("result") or {}
        tried = (outcome.get("reports") or [{}])[-1].get("candidates") or [{}]
        entry = {**tried[0], "index": index, "task_id": child["id"]}
        if child["state"] == "CANCELLED":
            entry["outcome"] = "cancelled"  # another candidate passed first
        elif child["state"] == "SUCCEEDED" and winner is None:
            winner = entry
        elif "outcome" not in entry:
            entry["outcome"] = "failed"
        reasons.append(child.get("error"))
        report["candidates"].append(entry)
    if winner is not None:
        memo["code"] = winner["code"]
        memo["winner"] = {"attempt": attempt, "index": winner["index"]}
        return _scan_or_finish(opts, memo)
    if children and all(r == "GENERATION_FAILED" for r in reasons):
        return _fail(memo, "GENERATION_FAILED", "the model could not generate (see each candidate's task)")
    if children and all(r == "SANDBOX_FAILED" for r in reasons):
        return _fail(memo, "SANDBOX_FAILED", "the tests could not run (see each candidate's task)")
    tested = [c for c in report["candidates"] if "tests" in c and "code" in c]
    if tested:
        best = max(tested, key=lambda c: c["tests"].get("passed", 0))
        memo["feedback"] = {"code": best["code"], "failures": _failures(best)}
    memo["phase"] = "start"
    return _next_attempt(opts, memo, {})


def _after_generate(opts: _Options, memo: dict[str, Any], results: dict[str, pb.ActionResult]) -> pb.Decision:
    attempt = memo["attempt"]
    report: dict[str, Any] = {"attempt": attempt, "candidates": []}
    memo["reports"].append(report)
    actions = []
    for index in range(opts.candidates):
        result = results.get(f"gen.{attempt}.{index}")
        entry: dict[str, Any] = {"index": index}
        report["candidates"].append(entry)
        if result is None or result.status != pb.ACTION_STATUS_OK:
            entry["outcome"] = "generation_failed"
            entry["error"] = result.error.message if result is not None else "no result"
            continue
        text = json.loads(result.output_json or "{}").get("text", "")
        code = codeblocks.extract(text, opts.entrypoint)
        if not code:
            entry["outcome"] = "no_code"
            entry["answer"] = text[:2000]
            continue
        entry["code"] = code
        actions.append(_pytest(f"test.{attempt}.{index}", code, opts.tests))
    if all(c.get("outcome") == "generation_failed" for c in report["candidates"]):
        errors = sorted({c.get("error", "") for c in report["candidates"]})
        return _fail(memo, "GENERATION_FAILED", f"the model could not generate: {'; '.join(errors)}")
    if not actions:  # nothing to test this attempt: the answers held no code
        memo["phase"] = "start"
        return _next_attempt(opts, memo, {})
    memo["phase"] = "test"
    return pb.Decision(memo_json=json.dumps(memo), actions=actions)


def _after_test(opts: _Options, memo: dict[str, Any], results: dict[str, pb.ActionResult]) -> pb.Decision:
    attempt = memo["attempt"]
    report = memo["reports"][-1]
    winner = None
    for entry in report["candidates"]:
        result = results.get(f"test.{attempt}.{entry['index']}")
        if result is None or "code" not in entry:
            continue
        _record_test(entry, result)
        if entry["outcome"] == "passed" and winner is None:
            winner = entry
    if winner is not None:
        memo["code"] = winner["code"]
        memo["winner"] = {"attempt": attempt, "index": winner["index"]}
        return _scan_or_finish(opts, memo)
    broken = [c for c in report["candidates"] if c.get("reason") in INFRASTRUCTURE]
    if broken and len(broken) == sum(1 for c in report["candidates"] if "code" in c):
        # Every test run failed for a reason of the executor, not of the code: more attempts won't help.
        return _fail(memo, "SANDBOX_FAILED", f"the tests could not run: {broken[0].get('error', '')}")
    tested = [c for c in report["candidates"] if "tests" in c]
    if tested:
        best = max(tested, key=lambda c: c["tests"].get("passed", 0))
        memo["feedback"] = {"code": best["code"], "failures": _failures(best)}
    memo["phase"] = "start"
    return _next_attempt(opts, memo, {})


def _scan_or_finish(opts: _Options, memo: dict[str, Any]) -> pb.Decision:
    if not opts.scan:
        return _finish(memo, passed=True)
    memo["phase"] = "scan"
    key = f"scan.{len(memo['fixes'])}"
    action = pb.Action(key=key, timeout_s=TEST_TIMEOUT_S)
    action.exec.CopyFrom(pb.ExecAction(tool="scan", files={SOLUTION: memo["code"].encode()}))
    return pb.Decision(memo_json=json.dumps(memo), actions=[action])


def _after_scan(opts: _Options, memo: dict[str, Any], results: dict[str, pb.ActionResult]) -> pb.Decision:
    result = results.get(f"scan.{len(memo['fixes'])}")
    report = json.loads(result.output_json) if result is not None and result.output_json else None
    if report is None:
        memo["scan"] = {
            "error": result.error.message if result is not None else "no scan result",
            "findings": [],
        }
        return _finish(memo, passed=True)
    memo["scan"] = report
    high = [f for f in report.get("findings", []) if f.get("severity") == "HIGH"]
    if not high or len(memo["fixes"]) >= opts.max_fixes:
        return _finish(memo, passed=True)
    issues = "\n".join(f"- line {f.get('line')}: {f.get('message')} ({f.get('test_id')})" for f in high)
    messages = [
        ("system", SYSTEM),
        ("user", opts.request()),
        ("assistant", f"```python\n{memo['code']}```"),
        ("user", f"A security scan found these high-severity issues:\n{issues}\nFix them. {ASK}"),
    ]
    memo["fixes"].append({"issues": high})
    memo["phase"] = "fix"
    index = len(memo["fixes"])
    return pb.Decision(
        memo_json=json.dumps(memo), actions=[_infer(f"fix.{index}", opts, messages, 0.0, seed=index)]
    )


def _after_fix(opts: _Options, memo: dict[str, Any], results: dict[str, pb.ActionResult]) -> pb.Decision:
    fix = memo["fixes"][-1]
    result = results.get(f"fix.{len(memo['fixes'])}")
    text = json.loads(result.output_json or "{}").get("text", "") if result is not None else ""
    ok = result is not None and result.status == pb.ACTION_STATUS_OK
    code = codeblocks.extract(text, opts.entrypoint) if ok else ""
    if not code:
        fix["outcome"] = "no_code"
        return _finish(memo, passed=True)
    fix["code"] = code
    memo["phase"] = "retest"
    return pb.Decision(
        memo_json=json.dumps(memo), actions=[_pytest(f"retest.{len(memo['fixes'])}", code, opts.tests)]
    )


def _after_retest(opts: _Options, memo: dict[str, Any], results: dict[str, pb.ActionResult]) -> pb.Decision:
    fix = memo["fixes"][-1]
    result = results.get(f"retest.{len(memo['fixes'])}")
    if result is not None:
        _record_test(fix, result)
    if fix.get("outcome") != "passed":
        return _finish(memo, passed=True)  # the fix broke the tests: keep the code that passed
    memo["code"] = fix["code"]
    return _scan_or_finish(opts, memo)


# -- helpers -------------------------------------------------------------------------------------


def _infer(
    key: str, opts: _Options, messages: list[tuple[str, str]], temperature: float, seed: int
) -> pb.Action:
    action = pb.Action(key=key, timeout_s=GEN_TIMEOUT_S)
    action.infer.CopyFrom(
        pb.InferAction(
            model=opts.model,
            messages=[pb.ChatMessage(role=role, content=content) for role, content in messages],
            max_tokens=opts.max_tokens,
            temperature=temperature,
            seed=seed,
            stop=STOP,
        )
    )
    return action


def _pytest(key: str, code: str, tests: str) -> pb.Action:
    # Candidates often write the very same code: their tests then run once, and all share the result.
    action = pb.Action(key=key, timeout_s=TEST_TIMEOUT_S, share_identical=True)
    action.exec.CopyFrom(pb.ExecAction(tool="pytest", files={SOLUTION: code.encode(), TESTS: tests.encode()}))
    return action


def _record_test(entry: dict[str, Any], result: pb.ActionResult) -> None:
    if result.status in (pb.ACTION_STATUS_SKIPPED, pb.ACTION_STATUS_CANCELLED):
        entry["outcome"] = "cancelled"  # another candidate passed first (while it ran, or before)
        return
    report = json.loads(result.output_json) if result.output_json else {}
    if result.error.reason and result.error.reason != "EXIT_NONZERO":
        entry["reason"], entry["error"] = result.error.reason, result.error.message
    if report:
        entry["tests"] = report
    if result.status == pb.ACTION_STATUS_OK:
        entry["outcome"] = "passed"
    elif result.status == pb.ACTION_STATUS_TIMED_OUT:
        entry["outcome"] = "timed_out"
    else:
        entry["outcome"] = "failed"
        if not report.get("tests"):  # no per-test results: the module did not even import
            entry["output"] = (result.stdout + result.stderr)[-FEEDBACK_CHARS:]


def _failures(entry: dict[str, Any]) -> str:
    """The failing tests' messages, short enough for a small model's context."""
    lines = []
    for test in entry.get("tests", {}).get("tests", []):
        if test.get("outcome") in ("failed", "error"):
            message = test.get("message", "").strip().split("\n")
            lines.append(f"{test['name']}: " + "\n".join(message[:6]))
    text = "\n".join(lines) or entry.get("output", "") or entry.get("tests", {}).get("error", "")
    return text[:FEEDBACK_CHARS]


def _finish(memo: dict[str, Any], passed: bool) -> pb.Decision:
    result = {
        "passed": passed,
        "code": memo.get("code", ""),
        "attempts": memo["attempt"],
        "winner": memo.get("winner"),
        "reports": memo["reports"],
        "scan": memo.get("scan"),
        "fixes": memo["fixes"],
        "tokens": memo.get("tokens", {"in": 0, "out": 0}),
    }
    decision = pb.Decision(memo_json=json.dumps(memo))
    if passed:
        decision.final.CopyFrom(pb.Final(state=pb.TASK_STATE_SUCCEEDED, result_json=json.dumps(result)))
    else:
        decision.final.CopyFrom(
            pb.Final(
                state=pb.TASK_STATE_FAILED,
                result_json=json.dumps(result),
                error=pb.TaskError(
                    reason="TESTS_FAILED",
                    message=f"no candidate passed the tests in {memo['attempt']} attempt(s)",
                ),
            )
        )
    return decision


def _fail(memo: dict[str, Any], reason: str, message: str) -> pb.Decision:
    decision = pb.Decision(memo_json=json.dumps(memo))
    decision.final.CopyFrom(
        pb.Final(
            state=pb.TASK_STATE_FAILED,
            result_json=json.dumps({"passed": False, "reports": memo["reports"]}),
            error=pb.TaskError(reason=reason, message=message),
        )
    )
    return decision
