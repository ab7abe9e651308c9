"""The executor's pytest and scan tools, through the mesh: structured results from real runs."""

from __future__ import annotations

import json

from agentmesh.local import Mesh
from protos.agentmesh.v1 import common_pb2 as pb
from services.executor.sandbox import REQUIRED
from tests.conftest import client_for, run

CODE = "def add(a, b):\n    return a + b\n"
TESTS = (
    "from solution import add\n\n"
    "def test_adds():\n    assert add(2, 3) == 5\n\n"
    "def test_wrong_on_purpose():\n    assert add(2, 2) == 5, 'two and two'\n"
)
RISKY = "import subprocess\n\ndef run(cmd):\n    return subprocess.call(cmd, shell=True)\n"


def test_pytest_step_reports_each_test(mesh: Mesh) -> None:
    spec = {
        "steps": [
            {
                "id": "tests",
                "tool": "pytest",
                "continue_on_error": True,
                "files": {"solution.py": CODE, "test_solution.py": TESTS},
            }
        ]
    }

    async def go() -> None:
        async with client_for(mesh) as client:
            done = await client.wait((await client.submit("pipeline", spec)).id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error  # continue_on_error
            step = json.loads(done.result_json)["steps"]["tests"]
            assert step["status"] == "failed" and step["exit_code"] == 1
            report = step["output"]
            assert (report["passed"], report["failed"]) == (1, 1)
            failed = [t for t in report["tests"] if t["outcome"] == "failed"]
            assert (
                failed[0]["name"].endswith("test_wrong_on_purpose") and "two and two" in failed[0]["message"]
            )

    run(go())


def test_scan_step_finds_a_high_severity_issue(mesh: Mesh) -> None:
    spec = {"steps": [{"id": "scan", "tool": "scan", "files": {"tool.py": RISKY}, "continue_on_error": True}]}

    async def go() -> None:
        async with client_for(mesh) as client:
            done = await client.wait((await client.submit("pipeline", spec)).id)
            step = json.loads(done.result_json)["steps"]["scan"]
            findings = step["output"]["findings"]
            assert step["output"]["high"] >= 1
            shell = [f for f in findings if f["test_id"] == "B602"]
            assert (
                shell and shell[0]["severity"] == "HIGH" and shell[0]["line"] == 4 and shell[0]["cwe"] == 78
            )

    run(go())


def test_actions_run_under_resource_limits(mesh: Mesh) -> None:
    """A process that writes past the file-size limit is stopped (SIGXFSZ); limits are visible inside."""
    spec = {
        "steps": [
            {
                "id": "big",
                "tool": "python",
                "continue_on_error": True,
                "args": {"code": "open('big.bin', 'wb').write(b'x' * (80 << 20))"},
            },
            {"id": "limits", "tool": "shell", "args": {"command": "ulimit -n; ulimit -c; ulimit -f"}},
        ]
    }

    async def go() -> None:
        async with client_for(mesh) as client:
            done = await client.wait((await client.submit("pipeline", spec)).id)
            steps = json.loads(done.result_json)["steps"]
            assert steps["big"]["status"] == "failed" and steps["big"]["exit_code"] in (-25, 1), steps["big"]
            nofile, core, fsize = steps["limits"]["stdout"].split()
            assert (nofile, core) == ("1024", "0") and fsize != "unlimited"

    run(go())


def test_the_sandbox_report_names_every_protection(mesh: Mesh) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentmesh",
            "sandbox",
            "--json",
            "--executor",
            mesh.env["AGENTMESH_EXECUTOR_ADDR"],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    report = json.loads(out)
    names = {p["name"] for p in report["protections"]}
    assert {
        "cgroup-kill",
        "memory-limit",
        "pids-limit",
        "mount-namespace",
        "unprivileged-uid",
        "seccomp",
    } <= names
    assert all(p.get("detail") for p in report["protections"])
    # What is inactive is said in the notes too, and the levels follow from what is active.
    active = {p["name"] for p in report["protections"] if p.get("active")}
    assert all(any(n.startswith(p) for n in report.get("notes", [])) for p in names - active)
    for level, required in REQUIRED.items():
        assert (level in report.get("isolation_levels", [])) == ({*required, "network-namespace"} <= active)
    # Warm sandboxes are kept where full isolation is given (the default, two of them).
    full = "full" in report.get("isolation_levels", [])
    assert report.get("warm_sandboxes", 0) == (2 if full else 0)
    # Each tool it has comes with its declaration: what it does, its args, whether to repeat it.
    declared = {spec["name"]: spec for spec in report["tool_specs"]}
    assert set(declared) == set(report["tools"]) >= {"echo", "python", "shell", "pytest", "scan"}
    assert declared["shell"]["repeat"] == "REPEAT_SAFETY_SANDBOXED"
    assert json.loads(declared["python"]["args_schema_json"])["required"] == ["code"]


def test_the_react_agent_is_offered_the_executors_tools_and_no_others(mesh: Mesh) -> None:
    async def go() -> None:
        async with client_for(mesh) as client:
            # The first decision checks the asked tools against the executor's catalogue: no model runs.
            task = await client.submit("react", {"goal": "ship it", "tools": ["python", "deploy"]})
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_FAILED and done.error.reason == "UNKNOWN_TOOL", done.error
            assert "'deploy'" in done.error.message and "pytest" in done.error.message

    run(go())


def test_an_exec_step_can_lower_its_limits_and_states_its_isolation(mesh: Mesh) -> None:
    spec = {
        "steps": [
            {
                "id": "hog",
                "tool": "python",
                "args": {"code": "x = bytearray(200 << 20)"},
                "limits": {"memory_bytes": 64 << 20},
            },
            {"id": "plain", "tool": "shell", "args": {"command": "id -u"}, "isolation": "contained"},
        ]
    }

    async def go() -> None:
        async with client_for(mesh) as client:
            done = await client.wait((await client.submit("pipeline", spec)).id)
            steps = json.loads(done.result_json)["steps"]
            assert steps["hog"]["error"]["reason"] == "MEMORY_LIMIT", steps["hog"]
            assert steps["plain"]["status"] == "ok" and steps["plain"]["stdout"].strip() != "0"

    run(go())
