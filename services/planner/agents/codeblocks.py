"""Getting Python code out of what a (small) model answered.

Small models answer in every shape: a fenced block (```python, ```py, bare ```), a block that never
closes because the answer ran out of tokens, code with no fence at all, prose before and after,
several blocks of which one is an example call, `>>>` transcripts. `extract` takes the candidate
that defines the entrypoint and parses, preferring fenced code; it never runs anything.

Then `complete` mends what small models leave out: helpers the code calls but wrote in another
block are brought in, and names it uses from the standard library without importing them
(`math.sqrt` with no `import math`, `List[int]` with no `from typing import List`) are imported.
"""

from __future__ import annotations

import ast
import builtins
import re
import sys

FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
CODE_START = re.compile(r"^(?:def |class |import |from \S+ import |async def |@)")

# Standard-library modules whose names are more likely a model's own variable than the module.
NOT_IMPORTED = {"test", "this", "antigravity", "code", "types"}
# Names models use bare, and the standard-library module each comes from.
FROM_IMPORTS = {
    **dict.fromkeys(
        [
            "Any",
            "Callable",
            "Dict",
            "Iterable",
            "Iterator",
            "List",
            "Optional",
            "Sequence",
            "Set",
            "Tuple",
            "Union",
        ],
        "typing",
    ),
    **dict.fromkeys(["Counter", "OrderedDict", "defaultdict", "deque", "namedtuple"], "collections"),
    **dict.fromkeys(["cache", "lru_cache", "partial", "reduce"], "functools"),
    **dict.fromkeys(["accumulate", "combinations", "permutations", "product"], "itertools"),
    **dict.fromkeys(["dataclass", "field"], "dataclasses"),
    "Fraction": "fractions",
    "Decimal": "decimal",
}


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
    entrypoint is given), completed; '' when the answer holds no usable code."""
    found = candidates(text)
    if entrypoint:
        defining = [code for code in found if _defines(code, entrypoint)]
        if defining:
            return complete(defining[0], [code for code in found if code is not defining[0]])
        # The definition may be split over blocks (helpers, then the function): try them joined.
        joined = "\n\n".join(found)
        return complete(joined, []) if found and _defines(joined, entrypoint) else ""
    return complete(found[0], found[1:]) if found else ""


def complete(code: str, others: list[str]) -> str:
    """`code` with the top-level definitions it uses from `others` (other blocks of the answer) put
    before it, and imports added for the standard-library names it uses without importing."""
    missing = _unbound(code)
    if not missing:
        return code
    borrowed: list[str] = []
    for other in others:
        for node, names in _top_level_bindings(other):
            if names & missing:
                segment = ast.get_source_segment(other, node)
                if segment:
                    borrowed.append(segment)
                    missing -= names
    imports = sorted(
        [f"import {name}" for name in missing if name in sys.stdlib_module_names and name not in NOT_IMPORTED]
        + [f"from {FROM_IMPORTS[name]} import {name}" for name in missing if name in FROM_IMPORTS]
    )
    if not borrowed and not imports:
        return code
    mended = "\n".join(imports) + ("\n\n" if imports else "") + "\n\n".join(borrowed)
    candidate = mended.rstrip() + "\n\n\n" + code
    return candidate if _parses(candidate) else code


def _top_level_bindings(code: str) -> list[tuple[ast.stmt, set[str]]]:
    """Each top-level def, class and import of `code`, with the names it binds."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return []
    found: list[tuple[ast.stmt, set[str]]] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.append((node, {node.name}))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            found.append((node, {(a.asname or a.name).split(".")[0] for a in node.names}))
    return found


def _unbound(code: str) -> set[str]:
    """Names `code` reads that nothing in it binds and that are not builtins. Approximate on the
    safe side: a name bound anywhere counts as bound everywhere."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return set()
    read: set[str] = set()
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            bound.update(node.names)
        elif isinstance(node, ast.MatchAs | ast.MatchStar) and node.name:
            bound.add(node.name)
    return read - bound - set(dir(builtins))
