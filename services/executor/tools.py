"""What each tool runs, and how its output becomes structured data. No process handling here."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protos.agentmesh.v1 import common_pb2 as pb
from services.runtime.errors import FailedPrecondition, InvalidArgument

JUNIT_FILE = ".agentmesh-junit.xml"
BANDIT_FILE = ".agentmesh-bandit.json"
SEMGREP_FILE = ".agentmesh-semgrep.json"
SEMGREP_RULES = ".agentmesh-semgrep.yml"
RULES = Path(__file__).with_name("semgrep.yml")
# semgrep's severities, in bandit's words.
SEMGREP_SEVERITY = {"ERROR": "HIGH", "WARNING": "MEDIUM", "INFO": "LOW"}


@dataclass(frozen=True)
class Declared:
    """What a tool says of itself (Capabilities.tool_specs): models choose from the description and
    the args schema; the coordinator reads `repeat` after an ambiguous failure."""

    description: str
    args_schema: dict[str, Any]
    repeat: int  # a pb.RepeatSafety

    def spec(self, name: str) -> pb.ToolSpec:
        return pb.ToolSpec(
            name=name,
            description=self.description,
            args_schema_json=json.dumps(self.args_schema, sort_keys=True),
            repeat=self.repeat,  # type: ignore[arg-type]
        )


def _args_schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


# Every tool this executor can run. `command_for` enforces these schemas' rules with its own messages
# (jsonschema would cost the executor 9 MB); tests/unit/test_tool_specs.py holds the two to agreement.
DECLARED: dict[str, Declared] = {
    "echo": Declared(
        "Returns its args as its output at once; runs nothing.",
        {"type": "object"},
        pb.REPEAT_SAFETY_SAFE,
    ),
    "python": Declared(
        "Runs Python code in a fresh sandbox; you see what it prints (stdout and stderr).",
        _args_schema({"code": {"type": "string", "minLength": 1, "description": "the program"}}, ["code"]),
        pb.REPEAT_SAFETY_SANDBOXED,
    ),
    "shell": Declared(
        "Runs a /bin/sh command in a fresh sandbox; you see its output.",
        _args_schema(
            {"command": {"type": "string", "minLength": 1, "description": "the command"}}, ["command"]
        ),
        pb.REPEAT_SAFETY_SANDBOXED,
    ),
    "pytest": Declared(
        "Runs pytest on the workspace's files; the output has each test's outcome and message.",
        _args_schema(
            {"args": {"type": "array", "items": {"type": "string"}, "description": "extra pytest arguments"}},
            [],
        ),
        pb.REPEAT_SAFETY_SANDBOXED,
    ),
    "scan": Declared(
        "Scans the workspace's code for vulnerabilities (bandit, and semgrep where installed) without "
        "running it; the output lists the findings by severity.",
        _args_schema({}, []),
        pb.REPEAT_SAFETY_SAFE,
    ),
}


def specs(available: set[str]) -> list[pb.ToolSpec]:
    """The declarations of the tools this executor has, by name."""
    return [DECLARED[name].spec(name) for name in sorted(available)]


@dataclass(frozen=True)
class Command:
    argv: list[str]
    # Parses the workspace after the run into `output_json`; None: no structured output.
    parse: str | None = None
    # Files the tool itself needs in the workspace (semgrep's rules), beside the action's own.
    files: dict[str, bytes] = field(default_factory=dict)


def command_for(
    tool: str, args: dict[str, Any], python: str, available: set[str], semgrep: bool = False
) -> Command:
    if tool not in available:
        raise FailedPrecondition(
            f"tool {tool!r} is not available on this executor (has: {', '.join(sorted(available))})",
            reason="TOOL_UNAVAILABLE",
        )
    declared = DECLARED[tool].args_schema.get("properties") if tool in DECLARED else None
    if declared is not None and set(args) - set(declared):
        unknown = ", ".join(sorted(set(args) - set(declared)))
        takes = ", ".join(declared) or "no args"
        raise InvalidArgument(f"{tool} does not take args {unknown} (it takes: {takes})")
    if tool == "python":
        code = args.get("code")
        if not isinstance(code, str) or not code:
            raise InvalidArgument("python needs args.code (a non-empty string)")
        return Command([python, "-u", "-c", code])
    if tool == "shell":
        command = args.get("command")
        if not isinstance(command, str) or not command:
            raise InvalidArgument("shell needs args.command (a non-empty string)")
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
        bandit = [python, "-m", "bandit", "-r", ".", "-f", "json", "-o", BANDIT_FILE, "-q"]
        if not semgrep:
            return Command(bandit, parse="scan")
        # semgrep too, offline: our rules, no metrics, no version check (it hangs on a closed
        # network otherwise). The action's status stays bandit's.
        semgrep_argv = [
            str(Path(python).with_name("semgrep")), "scan", "--config", SEMGREP_RULES, "--json",
            "-o", SEMGREP_FILE, "--metrics=off", "--disable-version-check", "--quiet",
            "--exclude", SEMGREP_RULES, ".",
        ]  # fmt: skip
        # Both at once; the exit status is bandit's (1 when it found something).
        script = (
            f"{shlex.join(semgrep_argv)} > /dev/null 2>&1 & s=$!; "
            f"{shlex.join(bandit)}; b=$?; wait $s; exit $b"
        )
        return Command(
            ["/bin/sh", "-c", script],
            parse="scan",
            files={SEMGREP_RULES: RULES.read_bytes()},
        )
    raise InvalidArgument(f"unknown tool {tool!r}", reason="UNKNOWN_TOOL")


def parse_output(kind: str | None, read: Callable[[str], bytes | None]) -> str:
    """`read(name)` gives a workspace file's bytes, or None (missing, too big, not a regular file)."""
    if kind == "junit":
        return json.dumps(parse_junit(read(JUNIT_FILE)))
    if kind == "scan":
        report = parse_bandit(read(BANDIT_FILE))
        semgrep = read(SEMGREP_FILE)
        if semgrep is not None:
            extra = parse_semgrep(semgrep)
            report["findings"] += extra["findings"]
            report["high"] = sum(1 for f in report["findings"] if f["severity"] == "HIGH")
            report["scanners"] = ["bandit", "semgrep"]
            if extra["errors"]:
                report["semgrep_errors"] = extra["errors"]
        else:
            report["scanners"] = ["bandit"]
        return json.dumps(report)
    return ""


def parse_junit(data: bytes | None) -> dict[str, Any]:
    if data is None:
        return {"error": "pytest wrote no report (collection failed or no tests)", "tests": []}
    # Imported here: only pytest actions need it, and an idle executor saves its 0.6 MB.
    import xml.etree.ElementTree as ET  # noqa: N817, PLC0415

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
            "tool": "bandit",
        }
        for r in report.get("results", [])
    ]
    return {"findings": findings, "high": sum(1 for f in findings if f["severity"] == "HIGH")}


def parse_semgrep(data: bytes) -> dict[str, Any]:
    report = json.loads(data)
    findings = []
    for r in report.get("results", []):
        extra = r.get("extra", {})
        metadata = extra.get("metadata", {})
        cwe = metadata.get("cwe")
        cwe = cwe[0] if isinstance(cwe, list) and cwe else cwe
        number = None
        if isinstance(cwe, str) and cwe.startswith("CWE-"):
            digits = cwe[4:].split(":")[0]
            number = int(digits) if digits.isdigit() else None
        findings.append(
            {
                "severity": SEMGREP_SEVERITY.get(extra.get("severity", ""), "LOW"),
                "confidence": metadata.get("confidence", "MEDIUM"),
                "cwe": number,
                "test_id": r.get("check_id"),
                "file": r.get("path"),
                "line": r.get("start", {}).get("line"),
                "message": extra.get("message"),
                "tool": "semgrep",
            }
        )
    errors = [e.get("message", "")[:300] for e in report.get("errors", [])]
    return {"findings": findings, "errors": errors}
