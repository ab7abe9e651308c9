"""Getting Python code out of what a (small) model answered.

Small models answer in every shape: a fenced block (```python, ```py, bare ```), a block that never
closes because the answer ran out of tokens, code with no fence at all, prose before and after,
several blocks of which one is an example call, `>>>` transcripts. `extract` takes the candidate
that defines the entrypoint and parses, preferring fenced code; it never runs anything.
"""

from __future__ import annotations

import ast
import re

FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
CODE_START = re.compile(r"^(?:def |class |import |from \S+ import |async def |@)")


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _defines(code: str, name: str) -> bool:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name
        for node in ast.walk(tree)
    )


def _trim_to_parse(code: str) -> str:
    """Drop trailing lines until the code parses: an answer cut off by max_tokens, or prose after
    unfenced code. Empty if nothing does."""
    lines = code.rstrip().split("\n")
    while lines:
        candidate = "\n".join(lines).rstrip() + "\n"
        if _parses(candidate):
            return candidate
        lines.pop()
    return ""


def _unfenced(text: str) -> str:
    """The code part of an answer without fences: from the first line that starts code."""
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if CODE_START.match(line):
            return _trim_to_parse("\n".join(lines[index:]))
    return ""


def _strip_transcript(code: str) -> str:
    """`>>> ` and `... ` prompts of an interactive transcript, dropped; output lines kept out."""
    if ">>>" not in code:
        return code
    kept = []
    for line in code.split("\n"):
        if line.startswith(">>> ") or line.startswith("... "):
            kept.append(line[4:])
        elif line.strip() in (">>>", "..."):
            kept.append("")
    return "\n".join(kept)


def candidates(text: str) -> list[str]:
    """Every piece of the answer that could be the code, best guesses first."""
    found: list[str] = []
    for match in FENCE.finditer(text):
        language = match.group(1).lower()
        if language and language not in ("python", "py", "python3"):
            continue
        code = _strip_transcript(match.group(2))
        trimmed = code if _parses(code) else _trim_to_parse(code)
        if trimmed.strip():
            found.append(trimmed)
    unfenced = _unfenced(_strip_transcript(text))
    if unfenced.strip():
        found.append(unfenced)
    return found


def extract(text: str, entrypoint: str = "") -> str:
    """The code to test: the first candidate that defines `entrypoint` (or any that parses when no
    entrypoint is given); '' when the answer holds no usable code."""
    found = candidates(text)
    if entrypoint:
        defining = [code for code in found if _defines(code, entrypoint)]
        if defining:
            return defining[0]
        # The definition may be split over blocks (helpers, then the function): try them joined.
        joined = "\n\n".join(found)
        return joined if found and _defines(joined, entrypoint) else ""
    return found[0] if found else ""
