"""The `codegen` agent as pure logic: code extraction from model answers of every shape, and its
decisions (generate -> test -> scan -> fix) driven over the planner's protocol with hand-made
results, no processes; some also cold, each decision replayed from the journal."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protos.agentmesh.v1 import common_pb2 as pb
from services.planner.agents.codeblocks import extract
from services.planner.agents.codegen import codegen
from services.runtime.errors import InvalidArgument
from tests.unit.agent_driver import AgentDriver, planner_agent

AGENT = planner_agent(codegen)
ADD = "def add(a, b):\n    return a + b\n"
INPUT = {"spec": "Write add(a, b).", "tests": "from solution import add\n", "entrypoint": "add"}


# -- extraction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        f"```python\n{ADD}```",
        f"Sure! Here it is:\n\n```py\n{ADD}```\n\nThis adds two numbers.",
        f"```\n{ADD}```",
        f"```python\n{ADD}",  # the answer ran out of tokens before the closing fence
        f"```python\n{ADD}\nThis function takes two numbers and returns their sum.",  # prose, no fence
        f"Here you go:\n{ADD}\nThis function returns the sum.",  # no fence at all
        f"```python\nprint(add(1, 2))\n```\n\n```python\n{ADD}```",  # an example call first
        ">>> def add(a, b):\n...     return a + b\n...\n>>> add(1, 2)\n3",  # a transcript
    ],
)
def test_extracts_the_function_from_any_answer_shape(answer: str) -> None:
    code = extract(answer, "add")
    namespace: dict[str, Any] = {}
    exec(compile(code, "solution.py", "exec"), namespace)  # noqa: S102 - our own fixture strings
    assert namespace["add"](2, 3) == 5


@pytest.mark.parametrize(
    "answer",
    [
        "I cannot help with that.",
        "```javascript\nfunction add(a, b) { return a + b }\n```",
        "def other():\n  pass",
    ],
)
def test_no_usable_code_is_empty(answer: str) -> None:
    assert extract(answer, "add") == ""


def run_extracted(answer: str, entrypoint: str) -> Any:
    namespace: dict[str, Any] = {}
    exec(compile(extract(answer, entrypoint), "solution.py", "exec"), namespace)  # noqa: S102 - our fixtures
    return namespace[entrypoint]


def test_helpers_in_a_separate_block_are_kept() -> None:
    answer = (
        "```python\ndef _twice(x):\n    return 2 * x\n```\nthen\n"
        "```python\ndef double(x):\n    return _twice(x)\n```\nand a call:\n```python\nprint(double(4))\n```"
    )
    assert run_extracted(answer, "double")(3) == 6
    assert "print(" not in extract(answer, "double")  # the example call is not brought in


@pytest.mark.parametrize(
    ("answer", "entrypoint", "args", "expected"),
    [
        ("```python\ndef hyp(a, b):\n    return math.sqrt(a * a + b * b)\n```", "hyp", (3, 4), 5.0),
        ("```python\ndef total(xs: List[int]) -> int:\n    return sum(xs)\n```", "total", ([1, 2],), 3),
        (
            "def top(s):\n    return Counter(s).most_common(1)[0][0]\n\nIt counts letters.",
            "top",
            ("abca",),
            "a",
        ),
        (
            "```python\ndef fact(n):\n    return reduce(lambda a, b: a * b, range(1, n + 1), 1)\n```",
            "fact",
            (5,),
            120,
        ),
    ],
)
def test_a_missing_standard_library_import_is_added(
    answer: str, entrypoint: str, args: tuple, expected: Any
) -> None:
    assert run_extracted(answer, entrypoint)(*args) == expected


def test_names_that_are_neither_defined_nor_standard_are_left_alone() -> None:
    answer = "```python\ndef f(x):\n    return helper(x) + len(x)\n```"
    assert extract(answer, "f") == "def f(x):\n    return helper(x) + len(x)\n"


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"tests": "x"}, "input.spec"),
        ({**INPUT, "language": "rust"}, "input.language"),
        ({**INPUT, "candidates": 0}, "input.candidates"),
        ({**INPUT, "max_attempts": 11}, "input.max_attempts"),
        ({**INPUT, "entrypoint": "not valid"}, "input.entrypoint"),
        ({**INPUT, "colour": "blue"}, "input.colour"),
        ({**INPUT, "temperature": 3}, "input.temperature"),
    ],
)
def test_bad_input_is_refused_naming_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        AGENT.validate(spec)
    assert field in [f for f, _ in info.value.field_violations]


# -- decisions --------------------------------------------------------------------------------


class Driver(AgentDriver):
    def __init__(self, cold: bool = False, **input_fields: Any) -> None:
        super().__init__(codegen, {**INPUT, **input_fields}, cold=cold)
        self.step([])


def gen_result(key: str, text: str) -> pb.ActionResult:
    return pb.ActionResult(
        key=key,
        status=pb.ACTION_STATUS_OK,
        output_json=json.dumps({"text": text}),
        cost=pb.Cost(tokens_in=50, tokens_out=20),
    )


def junit_result(key: str, passed: bool, message: str = "assert 4 == 5") -> pb.ActionResult:
    outcome = "passed" if passed else "failed"
    report = {"passed": int(passed), "failed": int(not passed), "tests": [
        {"name": "test_solution::test_add", "outcome": outcome, "message": "" if passed else message}
    ]}  # fmt: skip
    status = pb.ACTION_STATUS_OK if passed else pb.ACTION_STATUS_FAILED
    return pb.ActionResult(key=key, status=status, output_json=json.dumps(report))


def scan_result(key: str, high: int) -> pb.ActionResult:
    findings = [
        {"severity": "HIGH", "test_id": "B602", "line": 3, "message": "shell=True"} for _ in range(high)
    ]
    report = {"findings": findings, "high": high}
    return pb.ActionResult(key=key, status=pb.ACTION_STATUS_OK, output_json=json.dumps(report))


def test_candidates_fan_out_as_child_tasks_joined_as_any() -> None:
    run = Driver(candidates=3)
    assert run.keys() == ["fan.1"]
    spawn = run.decision.actions[0].spawn
    assert spawn.join == pb.JOIN_MODE_ANY and len(spawn.children) == 3
    kids = [json.loads(c.input_json) for c in spawn.children]
    assert all(c.agent == "codegen" for c in spawn.children)
    for kid in kids:
        AGENT.validate(kid)  # each child is a valid one-candidate, one-attempt codegen task
        assert (kid["candidates"], kid["max_attempts"], kid["scan"]) == (1, 1, False)
    assert kids[0]["temperature"] == 0.0 and kids[1]["temperature"] > 0
    assert len({k["seed"] for k in kids}) == 3


def _child(state: str, outcome: str = "", code: str = ADD, passed: int = 0) -> dict:
    tried = {"index": 0, "outcome": outcome, "code": code, "tests": {"passed": passed, "failed": 1 - passed,
             "tests": [{"name": "t::test_add", "outcome": outcome, "message": "assert 4 == 5"}]}}  # fmt: skip
    result = {"reports": [{"attempt": 1, "candidates": [tried]}]} if outcome else None
    error = None if state in ("SUCCEEDED", "CANCELLED") else "TESTS_FAILED"
    return {"id": f"kid-{state}", "state": state, "result": result, "error": error}


def _fanned(key: str, *children: dict) -> pb.ActionResult:
    status = (
        pb.ACTION_STATUS_OK if any(c["state"] == "SUCCEEDED" for c in children) else pb.ACTION_STATUS_FAILED
    )
    return pb.ActionResult(
        key=key,
        status=status,
        output_json=json.dumps({"children": list(children)}),
        cost=pb.Cost(tokens_out=40),
    )


@pytest.mark.parametrize("cold", [False, True])
def test_the_first_child_to_pass_wins_and_is_scanned(cold: bool) -> None:
    run = Driver(cold, candidates=2)
    run.step([_fanned("fan.1", _child("CANCELLED"), _child("SUCCEEDED", "passed", passed=1))])
    assert run.keys() == ["scan.0"]
    final = run.step([scan_result("scan.0", 0)]).final
    result = json.loads(final.result_json)
    assert final.state == pb.TASK_STATE_SUCCEEDED and result["code"] == ADD and result["attempts"] == 1
    assert [c["outcome"] for c in result["reports"][0]["candidates"]] == ["cancelled", "passed"]
    assert result["tokens"]["out"] == 40  # the children's tokens, rolled up into the spawn's cost


def test_when_no_child_passes_the_best_failure_goes_to_the_next_fan_out() -> None:
    run = Driver(candidates=2, max_attempts=2)
    wrong = "def add(a, b):\n    return a - b\n"
    run.step([_fanned("fan.1", _child("FAILED", "failed", code=wrong), _child("FAILED", "failed"))])
    assert run.keys() == ["fan.2"]
    kids = [json.loads(c.input_json) for c in run.decision.actions[0].spawn.children]
    assert all(k["feedback"]["code"] == wrong and "assert 4 == 5" in k["feedback"]["failures"] for k in kids)
    assert all(k["temperature"] > 0 for k in kids)  # no greedy candidate after the first attempt
    final = run.step([_fanned("fan.2", _child("FAILED", "failed"), _child("FAILED", "failed"))]).final
    assert final.state == pb.TASK_STATE_FAILED and final.error.reason == "TESTS_FAILED"
    assert len(json.loads(final.result_json)["reports"]) == 2


def test_a_child_samples_with_its_seed_and_starts_from_its_feedback() -> None:
    feedback = {"code": "def add(a, b):\n    return 0\n", "failures": "assert 0 == 5"}
    run = Driver(candidates=1, seed=7, temperature=0.5, feedback=feedback)
    infer = run.decision.actions[0].infer
    assert (infer.temperature, infer.seed) == (0.5, 7)
    assert "assert 0 == 5" in infer.messages[-1].content


def test_failures_are_fed_back_and_the_task_fails_after_max_attempts() -> None:
    run = Driver(candidates=1, max_attempts=2)
    wrong = "def add(a, b):\n    return a - b\n"
    test = run.step([gen_result("gen.1.0", f"```python\n{wrong}```")]).actions[0]
    # Candidates that wrote the same code share one test run (the coordinator joins them).
    assert test.key == "test.1.0" and test.share_identical
    run.step([junit_result("test.1.0", False, "AssertionError: assert -1 == 5")])
    assert run.keys() == ["gen.2.0"]
    messages = [(m.role, m.content) for m in run.decision.actions[0].infer.messages]
    assert messages[2] == ("assistant", f"```python\n{wrong}```")
    assert "assert -1 == 5" in messages[3][1] and "test_add" in messages[3][1]
    run.step([gen_result("gen.2.0", f"```python\n{wrong}```")])
    final = run.step([junit_result("test.2.0", False)]).final
    assert final.state == pb.TASK_STATE_FAILED and final.error.reason == "TESTS_FAILED"
    result = json.loads(final.result_json)
    assert result["attempts"] == 2 and [r["attempt"] for r in result["reports"]] == [1, 2]
    assert all(r["candidates"][0]["outcome"] == "failed" for r in result["reports"])


def test_answers_without_code_go_straight_to_the_next_attempt() -> None:
    run = Driver(candidates=1, max_attempts=2)
    run.step([gen_result("gen.1.0", "Here is an explanation without any code.")])
    assert run.keys() == ["gen.2.0"]
    run.step([gen_result("gen.2.0", "still nothing")])
    assert run.decision.final.error.reason == "TESTS_FAILED"


@pytest.mark.parametrize("cold", [False, True])
def test_high_severity_findings_get_a_fix_that_is_kept_only_if_it_passes(cold: bool) -> None:
    run = Driver(cold, candidates=1, max_fixes=2)
    run.step([gen_result("gen.1.0", f"```python\n{ADD}```")])
    run.step([junit_result("test.1.0", True)])
    run.step([scan_result("scan.0", 1)])
    assert run.keys() == ["fix.1"]
    assert "B602" in run.decision.actions[0].infer.messages[-1].content
    fixed = "def add(a, b):\n    return int(a) + int(b)\n"
    run.step([gen_result("fix.1", f"```python\n{fixed}```")])
    assert run.keys() == ["retest.1"]
    run.step([junit_result("retest.1", True)])
    assert run.keys() == ["scan.1"]  # the fixed code is scanned again
    final = run.step([scan_result("scan.1", 0)]).final
    result = json.loads(final.result_json)
    assert final.state == pb.TASK_STATE_SUCCEEDED and result["code"] == fixed and len(result["fixes"]) == 1


def test_a_fix_that_breaks_the_tests_is_dropped() -> None:
    run = Driver(candidates=1)
    run.step([gen_result("gen.1.0", f"```python\n{ADD}```")])
    run.step([junit_result("test.1.0", True)])
    run.step([scan_result("scan.0", 2)])
    run.step([gen_result("fix.1", "```python\ndef add(a, b):\n    return None\n```")])
    final = run.step([junit_result("retest.1", False)]).final
    result = json.loads(final.result_json)
    assert final.state == pb.TASK_STATE_SUCCEEDED and result["code"] == ADD
    assert result["scan"]["high"] == 2 and result["fixes"][0]["outcome"] == "failed"


def test_a_generation_failure_fails_the_task_clearly() -> None:
    run = Driver(candidates=1)
    error = pb.TaskError(reason="UNAVAILABLE", message="no model loaded")
    final = run.step([pb.ActionResult(key="gen.1.0", status=pb.ACTION_STATUS_FAILED, error=error)]).final
    assert final.state == pb.TASK_STATE_FAILED and final.error.reason == "GENERATION_FAILED"
    assert "no model loaded" in final.error.message


def test_a_sandbox_that_cannot_run_tests_fails_the_task_instead_of_retrying() -> None:
    run = Driver(candidates=1, max_attempts=5)
    run.step([gen_result("gen.1.0", f"```python\n{ADD}```")])
    error = pb.TaskError(reason="ISOLATION_UNAVAILABLE", message="no bubblewrap")
    final = run.step([pb.ActionResult(key="test.1.0", status=pb.ACTION_STATUS_FAILED, error=error)]).final
    assert final.error.reason == "SANDBOX_FAILED" and "no bubblewrap" in final.error.message
