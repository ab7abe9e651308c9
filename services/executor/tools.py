"""What each tool runs, and how its output becomes structured data. No process handling here."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.runtime.errors import FailedPrecondition, InvalidArgument

JUNIT_FILE = ".agentmesh-junit.xml"
BANDIT_FILE = ".agentmesh-bandit.json"


@dataclass(frozen=True)
class Command:
    argv: list[str]
    # Parses the workspace after the run into `output_json`; None: no structured output.
    parse: str | None = None


def command_for(tool: str, args: dict[str, Any], python: str, available: set[str]) -> Command:
    if tool not in available:
        raise FailedPrecondition(
            f"tool {tool!r} is not available on this executor (has: {', '.join(sorted(available))})",
            reason="TOOL_UNAVAILABLE",
        )
    if tool == "python":
        code = args.get("code")
        if not isinstance(code, str):
            raise InvalidArgument("python needs args.code (string)")
        return Command([python, "-u", "-c", code])
    if tool == "shell":
        command = args.get("command")
        if not isinstance(command, str):
            raise InvalidArgument("shell needs args.command (string)")
        return Command(["/bin/sh", "-c", command])
    if tool == "pytest":
        extra = args.get("args", [])
        if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
            raise InvalidArgument("pytest args.args must be a list of strings")
        return Command(
            [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={JUNIT_FILE}", *extra],
            parse="junit",
        )
    if tool == "scan":
        return Command(
            [python, "-m", "bandit", "-r", ".", "-f", "json", "-o", BANDIT_FILE, "-q"], parse="bandit"
        )
    raise InvalidArgument(f"unknown tool {tool!r}", reason="UNKNOWN_TOOL")


def parse_output(kind: str | None, read: Callable[[str], bytes | None]) -> str:
    """`read(name)` gives a workspace file's bytes, or None (missing, too big, not a regular file)."""
    if kind == "junit":
        return json.dumps(parse_junit(read(JUNIT_FILE)))
    if kind == "bandit":
        return json.dumps(parse_bandit(read(BANDIT_FILE)))
    return ""


def parse_junit(data: bytes | None) -> dict[str, Any]:
    if data is None:
        return {"error": "pytest wrote no report (collection failed or no tests)", "tests": []}
    root = ET.fromstring(data)
    tests = []
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "errors", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or "") + ("\n" + child.text if child.text else "")
        counts[outcome] += 1
        tests.append(
            {
                "name": f"{case.get('classname', '')}::{case.get('name', '')}",
                "outcome": "error" if outcome == "errors" else outcome,
                "message": message[:4000],
            }
        )
    return {**counts, "tests": tests}


def parse_bandit(data: bytes | None) -> dict[str, Any]:
    if data is None:
        return {"error": "bandit wrote no report", "findings": []}
    report = json.loads(data)
    findings = [
        {
            "severity": r.get("issue_severity"),
            "confidence": r.get("issue_confidence"),
            "cwe": (r.get("issue_cwe") or {}).get("id"),
            "test_id": r.get("test_id"),
            "file": r.get("filename"),
            "line": r.get("line_number"),
            "message": r.get("issue_text"),
        }
        for r in report.get("results", [])
    ]
    return {"findings": findings, "high": sum(1 for f in findings if f["severity"] == "HIGH")}
