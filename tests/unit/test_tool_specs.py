"""The executor's tool declarations: valid schemas that say what `command_for` really accepts, and the
retry rule that reads their `repeat`."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from protos.agentmesh.v1 import common_pb2 as pb
from services.coordinator.repeat import why_not_repeatable
from services.executor.tools import DECLARED, command_for, specs
from services.runtime.errors import InvalidArgument

RUNS = {"python", "shell", "pytest", "scan"}  # echo never reaches command_for
SPECS = {spec.name: spec for spec in specs(set(DECLARED))}

ACCEPTED = [
    ("python", {"code": "print(1)"}),
    ("shell", {"command": "ls"}),
    ("pytest", {}),
    ("pytest", {"args": ["-x", "-k", "add"]}),
    ("scan", {}),
]
REFUSED = [
    ("python", {}),
    ("python", {"code": ""}),
    ("python", {"code": 1}),
    ("python", {"code": "print(1)", "timeout": 5}),
    ("shell", {"cmd": "ls"}),
    ("shell", {"command": ["ls"]}),
    ("pytest", {"args": "-x"}),
    ("pytest", {"args": [1]}),
    ("scan", {"path": "."}),
]


def test_every_tool_is_declared_with_a_valid_schema_and_a_repeat_rule() -> None:
    assert set(SPECS) == RUNS | {"echo"}
    for spec in SPECS.values():
        assert spec.description.endswith(".") and len(spec.description) > 20, spec.name
        Draft202012Validator.check_schema(json.loads(spec.args_schema_json))
        assert spec.repeat != pb.REPEAT_SAFETY_UNSPECIFIED, spec.name


@pytest.mark.parametrize(("tool", "args"), ACCEPTED)
def test_what_the_schema_accepts_the_executor_runs(tool: str, args: dict[str, Any]) -> None:
    assert Draft202012Validator(json.loads(SPECS[tool].args_schema_json)).is_valid(args)
    assert command_for(tool, args, "/usr/bin/python3", RUNS).argv


@pytest.mark.parametrize(("tool", "args"), REFUSED)
def test_what_the_schema_refuses_the_executor_refuses(tool: str, args: dict[str, Any]) -> None:
    assert not Draft202012Validator(json.loads(SPECS[tool].args_schema_json)).is_valid(args)
    with pytest.raises(InvalidArgument):
        command_for(tool, args, "/usr/bin/python3", RUNS)


def _exec(tool: str, network: bool = False, isolation: str = "") -> pb.Action:
    action = pb.Action(key="a")
    action.exec.CopyFrom(pb.ExecAction(tool=tool, network=network, isolation=isolation))
    return action


@pytest.mark.parametrize(
    ("action", "safe"),
    [
        (_exec("echo", network=True), True),
        (_exec("scan", network=True), True),  # reads the code, runs none of it
        (_exec("python"), True),  # its sandbox, and all it did there, is thrown away
        (_exec("python", isolation="full"), True),
        (_exec("shell", network=True), False),
        (_exec("pytest", isolation="contained"), False),
        (_exec("deploy"), False),  # not declared: unsafe
        (pb.Action(infer=pb.InferAction(prompt="hi")), True),
    ],
)
def test_repeat_safety_follows_the_declaration_and_how_the_action_ran(action: pb.Action, safe: bool) -> None:
    why = why_not_repeatable(action, SPECS)
    assert (why == "") is safe, why


def test_an_unsafe_declaration_is_never_repeated() -> None:
    unsafe = {"deploy": pb.ToolSpec(name="deploy", repeat=pb.REPEAT_SAFETY_UNSAFE)}
    assert "declares deploy unsafe" in why_not_repeatable(_exec("deploy"), unsafe)
    assert "could not be read" in why_not_repeatable(_exec("deploy"), {})
