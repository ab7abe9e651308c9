"""The `codegen` agent: the seed's case study, as an SDK agent. Generate code with a model, test it
in the sandbox, feed failures back, scan the winner for vulnerabilities, ask for a fix of what the
scan finds.

One attempt = `candidates` child tasks at once, each generating one candidate (the generations
batch together on the inference worker) and testing it in its own sandbox as soon as it is written;
the first child to pass wins and the others are cancelled, mid-generation or mid-test (an any-join
of a spawn). With one candidate the task does it itself: generate, then test. When none passes, the
failing tests of the best candidate go back into the next prompt, up to `max_attempts`. The winner
is scanned (bandit, and semgrep where installed); high-severity findings get `max_fixes` rounds of
"fix these issues", each re-tested, and a fix is kept only if it still passes.

The result: {passed, code, attempts, winner, reports (every candidate of every attempt: its code,
its test outcome), scan, fixes, tokens}; a task that fails keeps it as its result too.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from agentmesh.sdk import AgentError, Context, ExecResult, InferResult, Join, Status, agent
from services.planner.agents import codeblocks

SOLUTION = "solution.py"
TESTS = "test_solution.py"
SYSTEM = "You are an expert Python programmer. You write correct, simple, self-contained code."
ASK = "Reply with the complete code in one ```python code block."
# Generation stops at the end of the first code block: the prose small models add after it is tokens
# (time, money) for nothing, and the slowest candidate's tail is what a batch of candidates waits for.
# A fence that opens a block has a language after it (```python), so only a closing one matches.
STOP = ["\n```\n"]
FEEDBACK_CHARS = 1200
# Test-run failures that say nothing about the code.
INFRASTRUCTURE = frozenset({"TOOL_UNAVAILABLE", "ISOLATION_UNAVAILABLE", "WORKSPACE_ERROR", "UNAVAILABLE"})
TEST_TIMEOUT_S = 60.0
GEN_TIMEOUT_S = 600.0


def _count(low: int, high: int, default: int, what: str) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high, "default": default, "description": what}


INPUT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["spec", "tests"],
    "properties": {
        "spec": {"type": "string", "pattern": r"\S", "description": "what the code must do"},
        "tests": {
            "type": "string",
            "pattern": r"\S",
            "description": f"pytest tests; they import the code from {SOLUTION[:-3]}",
        },
        "language": {"enum": ["python"], "default": "python"},
        "entrypoint": {
            "type": "string",
            "pattern": r"^([A-Za-z_][A-Za-z0-9_]*)?$",
            "default": "",
            "description": "the function the tests call (a Python identifier)",
        },
        "model": {"type": "string", "default": "", "description": "the model to ask ('': the default)"},
        "scan": {"type": "boolean", "default": True, "description": "scan the winner for vulnerabilities"},
        "temperature": {
            "type": "number",
            "minimum": 0,
            "maximum": 2,
            "default": 0.7,
            "description": "sampling temperature of all candidates but the first attempt's first",
        },
        "max_attempts": _count(1, 10, 3, "attempts, each with the best failure fed back"),
        "candidates": _count(1, 8, 2, "candidates per attempt, generated and tested at once"),
        "max_tokens": _count(16, 4096, 384, "tokens per generation"),
        "max_fixes": _count(0, 5, 1, "rounds of fixing what the scan finds"),
        # Set by a parent codegen task for each of its candidates: sample with exactly this seed and
        # temperature (no greedy first candidate), starting from the parent's feedback.
        "seed": {"type": "integer", "minimum": 0, "maximum": 2**62 - 1},
        "feedback": {
            "type": "object",
            "required": ["code", "failures"],
            "properties": {"code": {"type": "string"}, "failures": {"type": "string"}},
            "description": "a previous attempt to improve on",
        },
    },
}


@dataclass
class Job:
    """One codegen task's options and what it found so far (what its result reports)."""

    inp: dict[str, Any]
    attempt: int = 0
    reports: list[dict[str, Any]] = field(default_factory=list)
    feedback: dict[str, str] | None = None
    code: str = ""
    winner: dict[str, int] | None = None
    scan: dict[str, Any] | None = None
    fixes: list[dict[str, Any]] = field(default_factory=list)

    def request(self) -> str:
        entrypoint = self.inp["entrypoint"]
        named = f"\nThe function must be named `{entrypoint}`." if entrypoint else ""
        return f"{self.inp['spec']}{named}\n{ASK}"

    def result(self, ctx: Context, passed: bool) -> dict[str, Any]:
        return {
            "passed": passed,
            "code": self.code,
            "attempts": self.attempt,
            "winner": self.winner,
            "reports": self.reports,
            "scan": self.scan,
            "fixes": self.fixes,
            "tokens": {"in": ctx.usage.tokens_in, "out": ctx.usage.tokens_out},
        }

    def fail(self, reason: str, message: str) -> AgentError:
        return AgentError(message, reason=reason, result={"passed": False, "reports": self.reports})


@agent(
    name="codegen",
    version="2",
    input=INPUT,
    description="Write code for a spec with a model, test candidates in parallel sandboxes, feed failures "
    "back, scan the winner for vulnerabilities and fix them",
)
async def codegen(ctx: Context, inp: dict[str, Any]) -> dict[str, Any]:
    job = Job(inp, feedback=inp.get("feedback"))
    attempt_once = _fan_out if inp["candidates"] > 1 else _generate_and_test
    while job.winner is None:
        if job.attempt >= inp["max_attempts"]:
            raise AgentError(
                f"no candidate passed the tests in {job.attempt} attempt(s)",
                reason="TESTS_FAILED",
                result=job.result(ctx, passed=False),
            )
        job.attempt += 1
        report: dict[str, Any] = {"attempt": job.attempt, "candidates": []}
        job.reports.append(report)
        await attempt_once(ctx, job, report["candidates"])
    if inp["scan"]:
        await _scan_and_fix(ctx, job)
    return job.result(ctx, passed=True)


# -- one attempt ------------------------------------------------------------------------------------


async def _fan_out(ctx: Context, job: Job, entries: list[dict[str, Any]]) -> None:
    """One child codegen task per candidate, joined as any: the first to pass cancels the rest."""
    inp = job.inp
    base = {
        "spec": inp["spec"],
        "tests": inp["tests"],
        "model": inp["model"],
        "max_tokens": inp["max_tokens"],
    }
    if inp["entrypoint"]:
        base["entrypoint"] = inp["entrypoint"]
    if job.feedback:
        base["feedback"] = job.feedback
    children = []
    for index in range(inp["candidates"]):
        greedy = job.attempt == 1 and index == 0
        child = {
            **base,
            "candidates": 1,
            "max_attempts": 1,
            "scan": False,
            "max_fixes": 0,
            "temperature": 0.0 if greedy else inp["temperature"],
            "seed": job.attempt * 1000 + index,
        }
        children.append(("codegen", child))
    fan = await ctx.spawn_many(children, join=Join.ANY, key=f"fan.{job.attempt}", check=False)
    winner = None
    reasons = []
    for index, child in enumerate(fan.children):
        tried = ((child.result or {}).get("reports") or [{}])[-1].get("candidates") or [{}]
        entry = {**tried[0], "index": index, "task_id": child.id}
        if child.state == "CANCELLED":
            entry["outcome"] = "cancelled"  # another candidate passed first
        elif child.state == "SUCCEEDED" and winner is None:
            winner = entry
        elif "outcome" not in entry:
            entry["outcome"] = "failed"
        reasons.append(child.error)
        entries.append(entry)
    if winner is not None:
        job.code, job.winner = winner["code"], {"attempt": job.attempt, "index": winner["index"]}
        return
    if reasons and all(r == "GENERATION_FAILED" for r in reasons):
        raise job.fail("GENERATION_FAILED", "the model could not generate (see each candidate's task)")
    if reasons and all(r == "SANDBOX_FAILED" for r in reasons):
        raise job.fail("SANDBOX_FAILED", "the tests could not run (see each candidate's task)")
    _keep_best_failure(job, entries)


async def _generate_and_test(ctx: Context, job: Job, entries: list[dict[str, Any]]) -> None:
    """One candidate, written and tested by this task itself."""
    inp = job.inp
    messages = [("system", SYSTEM), ("user", job.request())]
    if job.feedback:
        messages += [
            ("assistant", f"```python\n{job.feedback['code']}```"),
            ("user", f"That code fails these tests:\n{job.feedback['failures']}\nFix it. {ASK}"),
        ]
    seed = inp.get("seed")
    # The first attempt's candidate is greedy (the model's best guess), unless a parent set its seed.
    greedy = job.attempt == 1 and seed is None
    entry: dict[str, Any] = {"index": 0}
    entries.append(entry)
    answer = await _infer(
        ctx,
        f"gen.{job.attempt}.0",
        inp,
        messages,
        temperature=0.0 if greedy else inp["temperature"],
        seed=seed if seed is not None else job.attempt * 1000,
    )
    if not answer.ok:
        entry["outcome"], entry["error"] = "generation_failed", answer.message
        raise job.fail("GENERATION_FAILED", f"the model could not generate: {answer.message}")
    code = codeblocks.extract(answer.text, inp["entrypoint"])
    if not code:  # nothing to test this attempt: the answer held no code
        entry["outcome"], entry["answer"] = "no_code", answer.text[:2000]
        return
    entry["code"] = code
    _record_test(entry, await _pytest(ctx, f"test.{job.attempt}.0", code, inp["tests"]))
    if entry["outcome"] == "passed":
        job.code, job.winner = code, {"attempt": job.attempt, "index": 0}
        return
    if entry.get("reason") in INFRASTRUCTURE:
        # The test run failed for a reason of the executor, not of the code: more attempts won't help.
        raise job.fail("SANDBOX_FAILED", f"the tests could not run: {entry.get('error', '')}")
    _keep_best_failure(job, entries)


def _keep_best_failure(job: Job, entries: list[dict[str, Any]]) -> None:
    """The tested candidate that passed the most tests goes back to the model in the next attempt."""
    tested = [c for c in entries if "tests" in c and "code" in c]
    if tested:
        best = max(tested, key=lambda c: c["tests"].get("passed", 0))
        job.feedback = {"code": best["code"], "failures": _failures(best)}


# -- the winner: scan, fix, retest ------------------------------------------------------------------


async def _scan_and_fix(ctx: Context, job: Job) -> None:
    inp = job.inp
    while True:
        scanned = await ctx.exec(
            "scan",
            files={SOLUTION: job.code},
            timeout=TEST_TIMEOUT_S,
            key=f"scan.{len(job.fixes)}",
            check=False,
        )
        if not isinstance(scanned.output, dict):
            job.scan = {"error": scanned.message or "no scan result", "findings": []}
            return
        job.scan = scanned.output
        high = [f for f in scanned.output.get("findings", []) if f.get("severity") == "HIGH"]
        if not high or len(job.fixes) >= inp["max_fixes"]:
            return
        issues = "\n".join(f"- line {f.get('line')}: {f.get('message')} ({f.get('test_id')})" for f in high)
        messages = [
            ("system", SYSTEM),
            ("user", job.request()),
            ("assistant", f"```python\n{job.code}```"),
            ("user", f"A security scan found these high-severity issues:\n{issues}\nFix them. {ASK}"),
        ]
        fix: dict[str, Any] = {"issues": high}
        job.fixes.append(fix)
        index = len(job.fixes)
        answer = await _infer(ctx, f"fix.{index}", inp, messages, temperature=0.0, seed=index)
        code = codeblocks.extract(answer.text, inp["entrypoint"]) if answer.ok else ""
        if not code:
            fix["outcome"] = "no_code"
            return
        fix["code"] = code
        _record_test(fix, await _pytest(ctx, f"retest.{index}", code, inp["tests"]))
        if fix["outcome"] != "passed":
            return  # the fix broke the tests: keep the code that passed
        job.code = code  # and scan it again


# -- actions and what their results say -------------------------------------------------------------


def _infer(
    ctx: Context,
    key: str,
    inp: dict[str, Any],
    messages: list[tuple[str, str]],
    temperature: float,
    seed: int,
) -> Awaitable[InferResult]:
    return ctx.infer(
        messages=[{"role": role, "content": content} for role, content in messages],
        model=inp["model"],
        max_tokens=inp["max_tokens"],
        temperature=temperature,
        seed=seed,
        stop=STOP,
        timeout=GEN_TIMEOUT_S,
        key=key,
        check=False,
    )


def _pytest(ctx: Context, key: str, code: str, tests: str) -> Awaitable[ExecResult]:
    # Candidates often write the very same code: their tests then run once, and all share the result.
    return ctx.exec(
        "pytest",
        files={SOLUTION: code, TESTS: tests},
        timeout=TEST_TIMEOUT_S,
        share_identical=True,
        key=key,
        check=False,
    )


def _record_test(entry: dict[str, Any], result: ExecResult) -> None:
    if result.status in (Status.SKIPPED, Status.CANCELLED):
        entry["outcome"] = "cancelled"  # another candidate passed first (while it ran, or before)
        return
    report = result.output if isinstance(result.output, dict) else {}
    if result.reason and result.reason != "EXIT_NONZERO":
        entry["reason"], entry["error"] = result.reason, result.message
    if report:
        entry["tests"] = report
    if result.ok:
        entry["outcome"] = "passed"
    elif result.status is Status.TIMED_OUT:
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
