"""The `react` agent as pure logic: parsing the model's tool calls, and the think/act loop driven over
the planner's protocol with hand-made results (also cold: each decision replayed from the journal,
with the tool catalogue the task read at its start)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentmesh.sdk import Tool
from protos.agentmesh.v1 import common_pb2 as pb
from services.planner.agents.react import parse_call, react
from services.planner.durable import tools_of
from services.runtime.errors import InvalidArgument, Unavailable
from tests.unit.agent_driver import ALL_TOOLS, AgentDriver, planner_agent

AGENT = planner_agent(react)
TOOLS = {
    name: Tool(name, **spec)
    for name, spec in (tools_of(ALL_TOOLS) or {}).items()
    if name in ("python", "shell", "pytest")
}


@pytest.mark.parametrize(
    "reply",
    [
        '{"tool": "python", "args": {"code": "print(6*7)"}}',
        'Sure.\n```json\n{"tool": "python", "args": {"code": "print(6*7)"}}\n```',
        'I think {braces} then {"tool": "python", "args": {"code": "print(6*7)"}} done',
    ],
)
def test_a_tool_call_is_found_in_any_reply_shape(reply: str) -> None:
    assert parse_call(reply, TOOLS) == ({"tool": "python", "args": {"code": "print(6*7)"}}, "")


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        ("I would run some code", "no JSON object"),
        ('{"tool": "rm", "args": {}}', "'tool' must be one of"),
        ('{"tool": "python", "args": {"command": "ls"}}', "'code' is a required property"),
        ('{"tool": "python", "args": "print(1)"}', "is not of type 'object'"),
        ('{"tool": "python", "args": {"code": ""}}', "code: '' should be non-empty"),
        ('{"tool": "pytest", "args": {"args": "-x"}}', "args: '-x' is not of type 'array'"),
        ('{"tool": "python", "args": {"code": "print(1)"}, "files": ["a.py"]}', '"files" must be'),
        ('{"tool": "python", "args": {"code": "print(1)"', "no JSON object"),  # cut off
    ],
)
def test_malformed_calls_say_what_is_wrong(reply: str, problem: str) -> None:
    call, why = parse_call(reply, TOOLS)
    assert call is None and problem in why


def test_an_answer_ends_the_loop() -> None:
    assert parse_call('{"answer": 42}', TOOLS) == ({"answer": "42"}, "")


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"goal": ""},
        {"goal": "x", "tools": []},
        {"goal": "x", "tools": ["python", "python"]},
        {"goal": "x", "max_steps": 0},
        {"goal": "x", "extra": 1},
    ],
)
def test_bad_input_is_refused(spec: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        AGENT.validate(spec)


class Loop(AgentDriver):
    def __init__(self, cold: bool = False, **input_fields: Any) -> None:
        super().__init__(react, {"goal": "What is 6*7?", **input_fields}, cold=cold)
        self.step([])

    def think(self, reply: str) -> pb.Decision:
        key = self.decision.actions[0].key
        result = pb.ActionResult(
            key=key,
            status=pb.ACTION_STATUS_OK,
            output_json=json.dumps({"text": reply}),
            cost=pb.Cost(tokens_out=7),
        )
        return self.step([result])

    def act(self, stdout: str, ok: bool = True) -> pb.Decision:
        key = self.decision.actions[0].key
        status = pb.ACTION_STATUS_OK if ok else pb.ACTION_STATUS_FAILED
        return self.step([pb.ActionResult(key=key, status=status, stdout=stdout, exit_code=0 if ok else 1)])


@pytest.mark.parametrize("cold", [False, True])
def test_think_act_observe_answer(cold: bool) -> None:
    loop = Loop(cold)
    assert loop.decision.actions[0].WhichOneof("kind") == "infer"
    act = loop.think('{"tool": "python", "args": {"code": "print(6*7)"}}')
    assert act.actions[0].exec.tool == "python" and not act.actions[0].exec.network
    assert json.loads(act.actions[0].exec.args_json) == {"code": "print(6*7)"}
    think = loop.act("42\n")
    messages = [(m.role, m.content) for m in think.actions[0].infer.messages]
    assert messages[-1][0] == "user" and "42" in messages[-1][1]
    final = loop.think('{"answer": "42"}').final
    result = json.loads(final.result_json)
    assert final.state == pb.TASK_STATE_SUCCEEDED and result["answer"] == "42"
    assert len(result["steps"]) == 2 and result["tokens"]["out"] == 14


def test_a_malformed_call_is_fed_back_not_crashed_on() -> None:
    loop = Loop()
    again = loop.think("let me think about it")
    assert again.actions[0].WhichOneof("kind") == "infer"
    assert "not a valid tool call" in again.actions[0].infer.messages[-1].content


def test_max_steps_fails_with_the_transcript() -> None:
    loop = Loop(max_steps=2)
    loop.think("nonsense")
    final = loop.think("more nonsense").final
    assert final.state == pb.TASK_STATE_FAILED and final.error.reason == "MAX_STEPS"
    assert len(json.loads(final.result_json)["steps"]) == 2


def test_the_tools_offered_are_the_executors_own_with_their_declared_args() -> None:
    loop = Loop()
    system = loop.decision.actions[0].infer.messages[0].content
    for name in ("python", "shell", "pytest", "scan"):
        assert f"- {name}: {ALL_TOOLS[name].description}" in system
    assert "- echo:" not in system  # offered only when named
    assert 'Args: {"code": "..."}' in system and 'Args: {"args": ["..."]}' in system


def test_a_call_may_give_the_tool_files() -> None:
    loop = Loop(tools=["pytest"])
    call = '{"tool": "pytest", "args": {}, "files": {"test_x.py": "def test_x():\\n    assert True\\n"}}'
    act = loop.think(call).actions[0].exec
    assert act.tool == "pytest" and dict(act.files) == {"test_x.py": b"def test_x():\n    assert True\n"}


def test_a_replay_offers_the_tools_the_task_read_at_its_start() -> None:
    loop = Loop(cold=True)
    first = loop.decision.actions[0].infer.messages[0].content
    loop.tools = {}  # the executor is down now: the recorded catalogue still answers ctx.tools()
    again = loop.think("not a call")
    assert again.actions[0].infer.messages[0].content == first
    assert loop.memo.get("tools") is None  # recorded once, in the decision that read it
    assert set(json.loads(loop.history[0].decision.memo_json)["tools"]) == set(ALL_TOOLS)


def test_a_tool_the_executor_does_not_have_fails_the_task_clearly() -> None:
    loop = AgentDriver(react, {"goal": "x", "tools": ["python", "deploy"]})
    final = loop.step([]).final
    assert final.state == pb.TASK_STATE_FAILED and final.error.reason == "UNKNOWN_TOOL"
    assert "'deploy'" in final.error.message and "python" in final.error.message


def test_without_the_executors_tools_the_agent_asks_to_be_called_again() -> None:
    # Unavailable is retryable: the coordinator calls again with the catalogue once it can read it.
    with pytest.raises(Unavailable):
        AgentDriver(react, {"goal": "x"}, tools={}).step([])


def test_only_the_tools_asked_for_are_offered() -> None:
    loop = Loop(tools=["shell"])
    system = loop.decision.actions[0].infer.messages[0].content
    assert "- shell:" in system and "- python:" not in system
    again = loop.think('{"tool": "python", "args": {"code": "1"}}')
    assert "'tool' must be one of shell" in again.actions[0].infer.messages[-1].content
