"""The `pipeline` agent as pure logic: spec validation and the DAG's decisions, no planner process."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protos.agentmesh.v1 import common_pb2 as pb
from services.planner.agents.pipeline import MAX_STEPS, PipelineAgent, _action, check_file_name
from services.runtime.errors import InvalidArgument
from services.runtime.wire import cost_to_dict
from tests.unit.agent_driver import AgentDriver

# Copied verbatim from DESIGN.md, "The pipeline spec": the public example must stay valid.
DESIGN_EXAMPLE = """
{"agent": "pipeline", "input": {"steps": [
  {"id": "fetch", "tool": "python", "args": {"code": "print(6*7)"}},
  {"id": "check", "tool": "shell", "args": {"command": "test -s data.csv"}, "files": {"data.csv": "a,b\\n1,2\\n"},
   "depends_on": ["fetch"], "retry": {"attempts": 3, "backoff_s": 0.5}, "timeout_s": 60},
  {"id": "ask", "tool": "approval", "args": {"prompt": "ship it?"}, "depends_on": ["check"]},
  {"id": "sum", "tool": "infer", "args": {"prompt": "Say hi", "max_tokens": 16}},
  {"id": "vec", "tool": "embed", "args": {"texts": ["a", "b"]}}
]}}
"""  # noqa: E501 - verbatim from DESIGN.md
RESULT_FIELDS = {"status", "exit_code", "stdout", "stderr", "output", "attempts", "cost"}

AGENT = PipelineAgent()


def design_spec() -> dict[str, Any]:
    return json.loads(DESIGN_EXAMPLE)["input"]


def refusal(spec: Any) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        AGENT.validate(spec)
    assert info.value.reason == "INVALID_ARGUMENT"
    assert info.value.field_violations, "a refusal must name the place"
    return info.value


def violations(spec: Any) -> dict[str, str]:
    return dict(refusal(spec).field_violations)


def one_step(**step: Any) -> dict[str, Any]:
    return {"steps": [{"id": "s", **step}]}


# ---------------------------------------------------------------- a small driver over decide()


class Run(AgentDriver):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(AGENT, spec)
        self.spec = spec

    def decide(self, results: list[pb.ActionResult] = ()) -> pb.Decision:  # type: ignore[assignment]
        return self.step(results)


def keys(decision: pb.Decision) -> list[str]:
    return [a.key for a in decision.actions]


def result(
    key: str,
    ok: bool = True,
    output: Any = None,
    **fields: Any,
) -> pb.ActionResult:
    return pb.ActionResult(
        action_id=f"task1/{key}",
        key=key,
        status=pb.ACTION_STATUS_OK if ok else pb.ACTION_STATUS_FAILED,
        output_json="" if output is None else json.dumps(output),
        attempts=fields.pop("attempts", 1),
        exit_code=fields.pop("exit_code", 0 if ok else 1),
        **fields,
    )


def final_result(decision: pb.Decision) -> dict[str, Any]:
    assert decision.HasField("final") and not decision.actions
    return json.loads(decision.final.result_json)


# ---------------------------------------------------------------- validate: accepted


def test_design_example_is_valid():
    AGENT.validate(design_spec())


@pytest.mark.parametrize("tool", ["echo", "pytest", "scan"])
def test_tools_without_required_args_are_valid(tool):
    AGENT.validate(one_step(tool=tool))


def test_infer_with_messages_instead_of_prompt_is_valid():
    AGENT.validate(one_step(tool="infer", args={"messages": [{"role": "user", "content": "hi"}]}))


def test_every_step_field_together_is_valid():
    AGENT.validate(
        {
            "steps": [
                {"id": "a", "tool": "echo"},
                {
                    "id": "b.2_x-y",
                    "tool": "shell",
                    "args": {"command": "true"},
                    "files": {"dir/f.txt": ""},
                    "depends_on": ["a"],
                    "retry": {"attempts": 100, "backoff_s": 0, "max_backoff_s": 3600},
                    "timeout_s": 24 * 3600,
                    "continue_on_error": True,
                    "network": False,
                },
            ]
        }
    )


def test_a_diamond_is_not_a_cycle():
    AGENT.validate(
        {
            "steps": [
                {"id": "d", "tool": "echo", "depends_on": ["b", "c"]},
                {"id": "b", "tool": "echo", "depends_on": ["a"]},
                {"id": "c", "tool": "echo", "depends_on": ["a"]},
                {"id": "a", "tool": "echo"},
            ]
        }
    )


def test_a_long_chain_in_dependency_order_is_valid():
    chain = [
        {"id": f"s{i}", "tool": "echo", "depends_on": [f"s{i - 1}"] if i else []} for i in range(MAX_STEPS)
    ]
    AGENT.validate({"steps": chain})


def test_a_long_chain_listed_dependents_first_is_valid():
    chain = [
        {"id": f"s{i}", "tool": "echo", "depends_on": [f"s{i - 1}"] if i else []} for i in range(MAX_STEPS)
    ]
    AGENT.validate({"steps": list(reversed(chain))})


# ---------------------------------------------------------------- validate: refused


@pytest.mark.parametrize(
    "spec",
    [None, [], "steps", {"steps": []}, {"steps": {}}, {"steps": [{"id": "a", "tool": "echo"}], "extra": 1}],
)
def test_input_shape_is_refused(spec):
    refusal(spec)


def test_too_many_steps_are_refused():
    spec = {"steps": [{"id": f"s{i}", "tool": "echo"} for i in range(MAX_STEPS + 1)]}
    assert "input.steps" in violations(spec)


def test_step_that_is_not_an_object_is_refused():
    assert violations({"steps": ["echo"]}) == {"steps[0]": "must be an object"}


def test_unknown_tool_is_refused():
    found = violations({"steps": [{"id": "a", "tool": "echo"}, {"id": "b", "tool": "rm-rf"}]})
    assert list(found) == ["steps[1].tool"]
    assert "python" in found["steps[1].tool"]


def test_missing_tool_is_refused():
    assert "steps[0].tool" in violations({"steps": [{"id": "a"}]})


@pytest.mark.parametrize("bad_id", [None, "", 7, "has space", "x" * 65, "a/b"])
def test_bad_step_id_is_refused(bad_id):
    assert "steps[0].id" in violations({"steps": [{"id": bad_id, "tool": "echo"}]})


def test_duplicate_ids_are_refused():
    found = violations({"steps": [{"id": "a", "tool": "echo"}, {"id": "a", "tool": "echo"}]})
    assert found == {"input.steps": "step ids must be unique"}


def test_unknown_dependency_is_refused():
    found = violations(
        {"steps": [{"id": "a", "tool": "echo"}, {"id": "b", "tool": "echo", "depends_on": ["zz"]}]}
    )
    assert found == {"steps[1].depends_on": "unknown step 'zz'"}


@pytest.mark.parametrize("deps", ["a", [1], {"a": 1}])
def test_depends_on_of_the_wrong_type_is_refused(deps):
    found = violations(
        {"steps": [{"id": "a", "tool": "echo"}, {"id": "b", "tool": "echo", "depends_on": deps}]}
    )
    assert "steps[1].depends_on" in found


def test_a_cycle_is_refused():
    found = violations(
        {
            "steps": [
                {"id": "a", "tool": "echo", "depends_on": ["c"]},
                {"id": "b", "tool": "echo", "depends_on": ["a"]},
                {"id": "c", "tool": "echo", "depends_on": ["b"]},
            ]
        }
    )
    assert list(found) == ["input.steps"]
    assert "cycle" in found["input.steps"]


def test_a_step_depending_on_itself_is_a_cycle():
    found = violations({"steps": [{"id": "a", "tool": "echo", "depends_on": ["a"]}]})
    assert found == {"input.steps": "dependency cycle through 'a'"}


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../etc/passwd", "'..'"),
        ("a/../../b", "'..'"),
        ("..", "'..'"),
        ("/etc/passwd", "absolute"),
        ("a\x00b", "NUL"),
        ("", "non-empty"),
        ("a//b", "empty path parts"),
        ("./a", "'.'"),
        ("dir/", "empty path parts"),
        ("x" * 256, "255"),
    ],
)
def test_unsafe_file_names_are_refused(name, problem):
    assert problem in (check_file_name(name) or "")
    found = violations(one_step(tool="python", args={"code": "pass"}, files={name: "x"}))
    assert list(found) == [f"steps[0].files[{name!r}]"]
    assert problem in found[f"steps[0].files[{name!r}]"]


@pytest.mark.parametrize("name", ["a.py", "dir/sub/file.txt", "..hidden", "a..b", "x" * 255])
def test_safe_file_names_pass(name):
    assert check_file_name(name) is None


@pytest.mark.parametrize("name", [None, 3, b"a"])
def test_non_string_file_names_are_unsafe(name):
    assert check_file_name(name) == "must be a non-empty string"


def test_file_content_must_be_a_string():
    found = violations(one_step(tool="pytest", files={"t.py": 3}))
    assert found == {"steps[0].files['t.py']": "content must be a string"}


def test_files_must_be_an_object():
    assert "steps[0].files" in violations(one_step(tool="pytest", files=["t.py"]))


@pytest.mark.parametrize(
    ("retry", "field"),
    [
        ("3", "steps[0].retry"),
        ([3], "steps[0].retry"),
        ({"tries": 3}, "steps[0].retry"),
        ({"attempts": "3"}, "steps[0].retry.attempts"),
        ({"attempts": 2.0}, "steps[0].retry.attempts"),
        ({"attempts": True}, "steps[0].retry.attempts"),
        ({"attempts": 0}, "steps[0].retry.attempts"),
        ({"attempts": 101}, "steps[0].retry.attempts"),
        ({"backoff_s": "1"}, "steps[0].retry.backoff_s"),
        ({"backoff_s": -1}, "steps[0].retry.backoff_s"),
        ({"max_backoff_s": False}, "steps[0].retry.max_backoff_s"),
        ({"max_backoff_s": 3601}, "steps[0].retry.max_backoff_s"),
    ],
)
def test_bad_retry_is_refused(retry, field):
    assert field in violations(one_step(tool="echo", retry=retry))


@pytest.mark.parametrize("timeout", ["60", True, -1, 24 * 3600 + 1, None, [60]])
def test_bad_timeout_is_refused(timeout):
    assert "steps[0].timeout_s" in violations(one_step(tool="echo", timeout_s=timeout))


@pytest.mark.parametrize("flag", ["continue_on_error", "network", "share_identical"])
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_bad_boolean_flags_are_refused(flag, value):
    found = violations(one_step(tool="echo", **{flag: value}))
    assert found == {f"steps[0].{flag}": "must be true or false"}


def test_unknown_step_fields_are_refused():
    found = violations(one_step(tool="echo", needs=["a"], command="ls"))
    assert found == {"steps[0]": "unknown fields: command, needs"}


@pytest.mark.parametrize(
    ("tool", "args", "field"),
    [
        ("python", {}, "steps[0].args.code"),
        ("python", {"code": 1}, "steps[0].args.code"),
        ("python", {"command": "print(1)"}, "steps[0].args.code"),
        ("shell", {}, "steps[0].args.command"),
        ("shell", {"command": ["ls"]}, "steps[0].args.command"),
        ("embed", {"texts": "a"}, "steps[0].args.texts"),
        ("infer", {}, "steps[0].args"),
        ("infer", {"prompt": 1}, "steps[0].args"),
    ],
)
def test_missing_or_mistyped_required_args_are_refused(tool, args, field):
    assert field in violations(one_step(tool=tool, args=args))


def test_python_without_args_at_all_is_refused():
    assert violations(one_step(tool="python")) == {"steps[0].args.code": "required, str"}


def test_args_must_be_an_object():
    assert "steps[0].args" in violations(one_step(tool="echo", args=["x"]))


def test_every_violation_is_reported_and_named_by_its_place():
    err = refusal(
        {
            "steps": [
                {"id": "ok", "tool": "echo"},
                {"id": "a", "tool": "nope", "timeout_s": "1"},
                {"id": "b", "tool": "python", "files": {"/abs": "x"}},
            ]
        }
    )
    assert [f for f, _ in err.field_violations] == [
        "steps[1].tool",
        "steps[1].timeout_s",
        "steps[2].args.code",
        "steps[2].files['/abs']",
    ]
    assert err.message.startswith("invalid pipeline: steps[1].tool")


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("infer", {"prompt": "x", "max_tokens": "many"}),
        ("infer", {"prompt": "x", "temperature": "hot"}),
        ("infer", {"prompt": "x", "max_tokens": 10**12}),
        ("approval", {"timeout_s": "soon"}),
    ],
)
def test_args_decide_cannot_convert_are_refused_by_validate(tool, args):
    with pytest.raises(InvalidArgument):
        AGENT.validate(one_step(tool=tool, args=args))


# ---------------------------------------------------------------- decide: the DAG


def test_first_decision_runs_exactly_the_steps_without_dependencies_concurrently():
    decision = Run(design_spec()).decide()
    assert keys(decision) == ["fetch", "sum", "vec"]
    assert not decision.HasField("final")
    assert not decision.fail_fast  # siblings are independent: one failing does not cancel the others


def test_a_step_starts_when_its_own_dependencies_are_done_not_the_whole_wave():
    """As the coordinator drives an on_each_settle decision: results one by one, a decision that
    comes to nothing is dropped (its memo too) and its results are handed in again."""
    run = Run(design_spec())
    run.decide()  # fetch, sum, vec
    assert keys(run.decide([result("fetch", output=None, stdout="42\n")])) == ["check"]
    recorded = run.memo
    idle = run.decide([result("sum", output={"text": "hi"})])  # nothing waits on sum
    assert idle.nothing_new and not idle.actions and not idle.HasField("final")
    run.memo = recorded  # not recorded: the next decision gets sum's result again
    nxt = run.decide([result("sum", output={"text": "hi"}), result("check")])
    assert keys(nxt) == ["ask"] and not nxt.nothing_new
    # ask (an approval) and vec are all that is left, and nothing waits on them: the coordinator
    # need not ask again until both have settled.
    assert not nxt.on_each_settle
    done = run.decide([result("vec", output={"vectors": []}), result("ask", output={"approved": True})])
    assert {sid: out["status"] for sid, out in final_result(done)["steps"].items()} == {
        "fetch": "ok", "check": "ok", "ask": "ok", "sum": "ok", "vec": "ok"
    }


def test_memo_marks_the_started_steps_running_and_the_rest_pending():
    run = Run(design_spec())
    decision = run.decide()
    started = {"fetch", "sum", "vec"}
    assert run.memo == {
        "steps": {
            sid: {"status": "running" if sid in started else "pending"}
            for sid in ["fetch", "check", "ask", "sum", "vec"]
        }
    }
    # `check` waits on the running `fetch`: the agent asks to hear of each step as it settles.
    assert decision.on_each_settle


def test_results_advance_the_dag_to_success():
    run = Run(design_spec())
    run.decide()
    second = run.decide([result("fetch", stdout="42\n"), result("sum", output={"text": "hi"}), result("vec")])
    assert keys(second) == ["check"]
    third = run.decide([result("check", attempts=2)])
    assert keys(third) == ["ask"]
    last = run.decide([result("ask", output={"approved": True})])
    assert last.final.state == pb.TASK_STATE_SUCCEEDED
    assert not last.final.error.reason
    steps = final_result(last)["steps"]
    assert set(steps) == {"fetch", "check", "ask", "sum", "vec"}
    assert {s["status"] for s in steps.values()} == {"ok"}
    assert steps["fetch"]["stdout"] == "42\n"
    assert steps["sum"]["output"] == {"text": "hi"}
    assert steps["check"]["attempts"] == 2
    assert steps["ask"]["output"] == {"approved": True}


def test_a_step_waits_for_all_of_its_dependencies():
    spec = {
        "steps": [
            {"id": "a", "tool": "echo"},
            {"id": "b", "tool": "echo", "depends_on": ["a"]},
            {"id": "c", "tool": "echo"},
            {"id": "join", "tool": "echo", "depends_on": ["b", "c"]},
        ]
    }
    run = Run(spec)
    assert keys(run.decide()) == ["a", "c"]
    assert keys(run.decide([result("a"), result("c")])) == ["b"]
    assert keys(run.decide([result("b")])) == ["join"]
    assert run.decide([result("join")]).final.state == pb.TASK_STATE_SUCCEEDED


def test_final_result_has_every_contracted_field():
    run = Run({"steps": [{"id": "a", "tool": "python", "args": {"code": "print(1)"}}]})
    run.decide()
    cost = pb.Cost(tokens_in=3, tokens_out=5, gpu_ms=1.5, cpu_ms=2.25, wall_ms=10.0, usd=0.001)
    last = run.decide(
        [result("a", output={"x": 1}, stdout="1\n", stderr="warn\n", exit_code=0, attempts=3, cost=cost)]
    )
    step = final_result(last)["steps"]["a"]
    assert RESULT_FIELDS <= set(step)
    assert step == {
        "status": "ok",
        "exit_code": 0,
        "stdout": "1\n",
        "stderr": "warn\n",
        "output": {"x": 1},
        "attempts": 3,
        "cost": cost_to_dict(cost),
    }


def test_final_result_keeps_the_error_and_truncation_of_a_step():
    run = Run(
        {"steps": [{"id": "a", "tool": "shell", "args": {"command": "false"}, "continue_on_error": True}]}
    )
    run.decide()
    failed = result(
        "a",
        ok=False,
        exit_code=2,
        truncated=True,
        error=pb.TaskError(reason="EXIT_NONZERO", message="exit 2"),
    )
    step = final_result(run.decide([failed]))["steps"]["a"]
    assert step["status"] == "failed"
    assert step["exit_code"] == 2
    assert step["output"] is None
    assert step["error"] == {"reason": "EXIT_NONZERO", "message": "exit 2"}
    assert step["truncated"] is True


def test_a_failed_step_skips_its_dependents_and_fails_the_pipeline():
    spec = {
        "steps": [
            {"id": "a", "tool": "python", "args": {"code": "raise SystemExit(1)"}},
            {"id": "b", "tool": "echo", "depends_on": ["a"]},
            {"id": "c", "tool": "echo", "depends_on": ["b"]},
            {"id": "free", "tool": "echo"},
        ]
    }
    run = Run(spec)
    assert keys(run.decide()) == ["a", "free"]
    last = run.decide([result("a", ok=False), result("free")])
    assert last.final.state == pb.TASK_STATE_FAILED
    assert last.final.error.reason == "STEP_FAILED"
    assert "a" in last.final.error.message
    assert json.loads(last.final.error.details_json) == {"steps": ["a"]}
    steps = final_result(last)["steps"]
    assert steps["a"]["status"] == "failed"
    assert steps["free"]["status"] == "ok"
    assert steps["b"] == {"status": "skipped", "reason": "dependency a did not succeed"}
    assert steps["c"] == {"status": "skipped", "reason": "dependency b did not succeed"}


@pytest.mark.parametrize(
    "status", [pb.ACTION_STATUS_FAILED, pb.ACTION_STATUS_TIMED_OUT, pb.ACTION_STATUS_CANCELLED]
)
def test_any_status_but_ok_counts_as_failed(status):
    run = Run({"steps": [{"id": "a", "tool": "echo"}]})
    run.decide()
    last = run.decide([pb.ActionResult(key="a", status=status)])
    assert last.final.state == pb.TASK_STATE_FAILED
    assert final_result(last)["steps"]["a"]["status"] == "failed"


def test_continue_on_error_lets_dependents_run_and_the_pipeline_succeed():
    spec = {
        "steps": [
            {"id": "a", "tool": "shell", "args": {"command": "false"}, "continue_on_error": True},
            {"id": "b", "tool": "echo", "depends_on": ["a"]},
        ]
    }
    run = Run(spec)
    run.decide()
    assert keys(run.decide([result("a", ok=False)])) == ["b"]
    last = run.decide([result("b")])
    assert last.final.state == pb.TASK_STATE_SUCCEEDED
    assert not last.final.error.reason
    steps = final_result(last)["steps"]
    assert steps["a"]["status"] == "failed"
    assert steps["b"]["status"] == "ok"


def test_a_dependent_of_a_skipped_step_is_skipped_even_with_continue_on_error():
    spec = {
        "steps": [
            {"id": "a", "tool": "echo"},
            {"id": "b", "tool": "echo", "depends_on": ["a"], "continue_on_error": True},
            {"id": "c", "tool": "echo", "depends_on": ["b"]},
        ]
    }
    run = Run(spec)
    run.decide()
    last = run.decide([result("a", ok=False)])
    steps = final_result(last)["steps"]
    assert steps["b"]["status"] == "skipped"
    assert steps["c"]["status"] == "skipped"
    assert json.loads(last.final.error.details_json) == {"steps": ["a"]}


def test_approval_answered_false_counts_as_failed():
    spec = {
        "steps": [
            {"id": "ask", "tool": "approval", "args": {"prompt": "ship it?"}},
            {"id": "ship", "tool": "echo", "depends_on": ["ask"]},
        ]
    }
    run = Run(spec)
    run.decide()
    last = run.decide([result("ask", output={"approved": False})])
    assert last.final.state == pb.TASK_STATE_FAILED
    assert last.final.error.reason == "STEP_FAILED"
    steps = final_result(last)["steps"]
    assert steps["ask"]["status"] == "failed"
    assert steps["ask"]["output"] == {"approved": False}
    assert steps["ship"]["status"] == "skipped"


@pytest.mark.parametrize("answer", [{"approved": True}, {"note": "fine"}, "yes", None])
def test_approval_answered_otherwise_counts_as_ok(answer):
    run = Run({"steps": [{"id": "ask", "tool": "approval"}]})
    run.decide()
    last = run.decide([result("ask", output=answer)])
    assert last.final.state == pb.TASK_STATE_SUCCEEDED


def test_decide_does_not_depend_on_anything_but_its_context():
    spec = design_spec()
    first = Run(spec).decide()
    again = Run(spec).decide()
    assert first == again


# ---------------------------------------------------------------- decide: tool -> action


def only_action(step: dict[str, Any]) -> pb.Action:
    decision = Run({"steps": [step]}).decide()
    assert len(decision.actions) == 1
    return decision.actions[0]


@pytest.mark.parametrize(
    ("tool", "args"),
    [("python", {"code": "print(1)"}), ("shell", {"command": "ls"}), ("echo", {"x": [1, 2]})],
)
def test_exec_tools_become_exec_actions_with_files_as_bytes(tool, args):
    action = only_action(
        {
            "id": "s",
            "tool": tool,
            "args": args,
            "files": {"data.csv": "a,b\n", "dir/ü.txt": "é"},
            "network": True,
        }
    )
    assert action.WhichOneof("kind") == "exec"
    assert action.key == "s"
    assert action.exec.tool == tool
    assert json.loads(action.exec.args_json) == args
    assert dict(action.exec.files) == {"data.csv": b"a,b\n", "dir/ü.txt": "é".encode()}
    assert action.exec.network is True


def test_share_identical_passes_to_the_action_and_defaults_to_off():
    step = {"id": "s", "tool": "shell", "args": {"command": "ls"}}
    assert only_action({**step, "share_identical": True}).share_identical is True
    assert only_action(step).share_identical is False


def test_exec_network_defaults_to_off_and_args_to_empty():
    action = only_action({"id": "s", "tool": "pytest", "files": {"test_x.py": "def test(): pass\n"}})
    assert action.exec.tool == "pytest"
    assert json.loads(action.exec.args_json) == {}
    assert action.exec.network is False


def test_infer_becomes_an_infer_action():
    action = only_action(
        {
            "id": "gen",
            "tool": "infer",
            "args": {
                "prompt": "Say hi",
                "model": "smol",
                "max_tokens": 16,
                "temperature": 0.5,
                "top_p": 0.9,
                "top_k": 40,
                "seed": 7,
                "stop": ["\n"],
            },
        }
    )
    assert action.WhichOneof("kind") == "infer"
    infer = action.infer
    assert (infer.prompt, infer.model, infer.max_tokens, infer.top_k, infer.seed) == (
        "Say hi",
        "smol",
        16,
        40,
        7,
    )
    assert infer.temperature == pytest.approx(0.5)
    assert infer.top_p == pytest.approx(0.9)
    assert list(infer.stop) == ["\n"]


def test_infer_defaults_and_messages():
    action = only_action(
        {
            "id": "gen",
            "tool": "infer",
            "args": {"messages": [{"role": "system", "content": "be brief"}, {"content": "hi"}]},
        }
    )
    infer = action.infer
    assert [(m.role, m.content) for m in infer.messages] == [("system", "be brief"), ("user", "hi")]
    assert (infer.prompt, infer.max_tokens, infer.top_k, infer.seed) == ("", 128, 0, 0)
    assert infer.temperature == 0.0
    assert infer.top_p == pytest.approx(1.0)


def test_embed_becomes_an_embed_action():
    action = only_action({"id": "vec", "tool": "embed", "args": {"texts": ["a", "b"], "model": "minilm"}})
    assert action.WhichOneof("kind") == "embed"
    assert list(action.embed.texts) == ["a", "b"]
    assert action.embed.model == "minilm"


def test_approval_becomes_await_input_with_prompt_and_timeout():
    action = only_action({"id": "ask", "tool": "approval", "args": {"prompt": "ship it?", "timeout_s": 30}})
    assert action.WhichOneof("kind") == "await_input"
    assert action.await_input.prompt == "ship it?"
    assert action.await_input.timeout_s == 30.0


def test_approval_defaults_to_a_generic_prompt_and_no_timeout():
    action = only_action({"id": "ask", "tool": "approval"})
    assert action.await_input.prompt == "approve?"
    assert action.await_input.timeout_s == 0.0


def test_retry_policy_and_timeout_are_copied():
    action = only_action(
        {
            "id": "s",
            "tool": "echo",
            "retry": {"attempts": 3, "backoff_s": 0.5, "max_backoff_s": 4},
            "timeout_s": 60,
        }
    )
    assert action.retry == pb.RetryPolicy(attempts=3, backoff_s=0.5, max_backoff_s=4.0)
    assert action.timeout_s == 60.0


def test_retry_defaults_to_one_attempt_and_no_timeout():
    action = only_action({"id": "s", "tool": "echo"})
    assert action.retry == pb.RetryPolicy(attempts=1)
    assert action.timeout_s == 0.0


def test_design_example_maps_each_tool_to_its_action_kind():
    run = Run(design_spec())
    kinds = {a.key: a.WhichOneof("kind") for a in run.decide().actions}
    check = run.decide([result("fetch"), result("sum"), result("vec")]).actions[0]
    ask = run.decide([result("check")]).actions[0]
    assert kinds == {"fetch": "exec", "sum": "infer", "vec": "embed"}
    assert check.exec.tool == "shell"
    assert dict(check.exec.files) == {"data.csv": b"a,b\n1,2\n"}
    assert check.retry.attempts == 3 and check.retry.backoff_s == 0.5 and check.timeout_s == 60.0
    assert ask.await_input.prompt == "ship it?"


# ---------------------------------------------------------------- a worker lost mid-run


LOST = pb.TaskError(reason="AMBIGUOUS_FAILURE", message="the worker was lost")


def _deploy(policy: str | None) -> dict[str, Any]:
    step: dict[str, Any] = {
        "id": "deploy",
        "tool": "shell",
        "args": {"command": "make deploy"},
        "network": True,
    }
    if policy:
        step["on_ambiguous"] = policy
    return {"steps": [step, {"id": "after", "tool": "echo", "depends_on": ["deploy"]}]}


@pytest.mark.parametrize(
    ("policy", "wire"),
    [
        (None, pb.AMBIGUOUS_POLICY_UNSPECIFIED),
        ("rerun", pb.AMBIGUOUS_POLICY_RERUN),
        ("fail", pb.AMBIGUOUS_POLICY_FAIL),
        ("ask", pb.AMBIGUOUS_POLICY_FAIL),
    ],
)
def test_on_ambiguous_reaches_the_coordinator(policy: str | None, wire: int) -> None:
    assert Run(_deploy(policy)).decide().actions[0].retry.on_ambiguous == wire


def test_an_unknown_on_ambiguous_is_refused() -> None:
    assert "steps[0].on_ambiguous" in violations(_deploy("maybe"))


def test_an_ambiguous_failure_fails_the_step_by_default() -> None:
    run = Run(_deploy(None))
    run.decide()
    final = run.decide([result("deploy", ok=False, error=LOST)])
    assert final.final.state == pb.TASK_STATE_FAILED
    assert final_result(final)["steps"]["deploy"]["error"]["reason"] == "AMBIGUOUS_FAILURE"


def test_ask_waits_for_a_person_and_reruns_on_yes() -> None:
    run = Run(_deploy("ask"))
    run.decide()
    asking = run.decide([result("deploy", ok=False, error=LOST)])
    assert keys(asking) == ["deploy#confirm"]
    assert "Run it again?" in asking.actions[0].await_input.prompt
    again = run.decide([result("deploy#confirm", output={"rerun": True})])
    assert keys(again) == ["deploy"]  # the same step, run once more
    after = run.decide([result("deploy")])
    assert keys(after) == ["after"]
    assert run.memo["steps"]["deploy"]["status"] == "ok"


def test_ask_fails_the_step_on_no() -> None:
    run = Run(_deploy("ask"))
    run.decide()
    run.decide([result("deploy", ok=False, error=LOST)])
    final = run.decide([result("deploy#confirm", output={"rerun": False})])
    steps = final_result(final)["steps"]
    assert steps["deploy"]["status"] == "failed" and steps["after"]["status"] == "skipped"


# ---------------------------------------------------------------- spawn over shards


SUM_SHARD = {
    "steps": [
        {
            "id": "sum",
            "tool": "python",
            "args": {"code": "import json; print(sum(json.load(open('shard.json'))))"},
        },
        {"id": "ask", "tool": "approval", "depends_on": ["sum"]},
    ]
}


def sharded(shard: dict[str, Any], **args: Any) -> dict[str, Any]:
    return one_step(tool="spawn", args={"shard": shard, "template": SUM_SHARD, **args})


def spawned_inputs(spec: dict[str, Any]) -> list[dict[str, Any]]:
    AGENT.validate(spec)
    action = _action(spec["steps"][0])
    return [json.loads(child.input_json) for child in action.spawn.children]


@pytest.mark.parametrize(
    ("shard", "parts"),
    [
        ({"items": [1, 2, 3, 4, 5], "size": 2}, [[1, 2], [3, 4], [5]]),
        ({"items": [1, 2, 3, 4, 5], "count": 2}, [[1, 2], [3, 4, 5]]),
        ({"items": [1, 2], "count": 5}, [[1], [2]]),  # never an empty shard
    ],
)
def test_a_spawn_over_shards_gives_each_child_its_part_in_shard_json(shard: dict, parts: list) -> None:
    children = spawned_inputs(sharded(shard))
    assert [json.loads(c["steps"][0]["files"]["shard.json"]) for c in children] == parts
    for child in children:
        assert "files" not in child["steps"][1]  # an approval has no workspace
        assert child["steps"][0]["args"] == SUM_SHARD["steps"][0]["args"]


def test_a_sharded_spawn_of_another_agent_puts_the_shard_in_the_named_field() -> None:
    spec = one_step(
        tool="spawn",
        args={"agent": "react", "shard": {"items": ["a", "b", "c"], "size": 2}, "template": {"max_steps": 3},
              "into": "items"},
    )  # fmt: skip
    assert spawned_inputs(spec) == [{"max_steps": 3, "items": ["a", "b"]}, {"max_steps": 3, "items": ["c"]}]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"inputs": [SUM_SHARD], "shard": {"items": [1], "size": 1}, "template": SUM_SHARD}, "steps[0].args"),
        ({"join": "all"}, "steps[0].args"),
        ({"shard": {"items": [1], "size": 1, "count": 1}, "template": SUM_SHARD}, "steps[0].args.shard"),
        ({"shard": {"items": [], "size": 1}, "template": SUM_SHARD}, "steps[0].args.shard.items"),
        ({"shard": {"items": [1], "size": 0}, "template": SUM_SHARD}, "steps[0].args.shard.size"),
        ({"shard": {"items": [1], "size": 1}}, "steps[0].args.template"),
        ({"shard": {"items": list(range(300)), "size": 1}, "template": SUM_SHARD}, "steps[0].args.shard"),
        ({"shard": {"items": [1], "size": 1}, "template": {"steps": [{"id": "x", "tool": "nope"}]}},
         "steps[0].args.template"),
        ({"shard": {"items": [1], "size": 1},
          "template": {"steps": [{"id": "x", "tool": "shell", "args": {"command": "true"},
                                  "files": {"shard.json": "[]"}}]}}, "steps[0].args.template"),
        ({"agent": "react", "shard": {"items": [1], "size": 1}, "template": {}}, "steps[0].args.into"),
    ],
)  # fmt: skip
def test_a_bad_sharded_spawn_is_refused_naming_the_field(args: dict, field: str) -> None:
    assert field in violations(one_step(tool="spawn", args=args))
