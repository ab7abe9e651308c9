"""Find the agents a user names: `--agents mypkg.agents,./more_agents.py`.

Each entry is a module path (imported as usual) or a Python file (imported from its path, never
installed). Every `@agent` definition among the module's globals is taken, and every low-level agent
instance too (an object with `name`, `description`, `validate` and `decide`: the planner's class API).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from agentmesh.sdk.definition import AgentDefinition


class AgentLoadError(Exception):
    pass


def _import_file(path: Path) -> ModuleType:
    path = path.resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    name = f"agentmesh_user_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise AgentLoadError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    # The file's own folder first, so that it can import its neighbours.
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module


def load_module(entry: str) -> ModuleType:
    entry = entry.strip()
    path = Path(entry)
    if entry.endswith(".py") or path.is_file():
        if not path.is_file():
            raise AgentLoadError(f"no such agent file: {entry}")
        return _import_file(path)
    return importlib.import_module(entry)


def definitions_in(module: ModuleType) -> list[Any]:
    return [
        value for value in vars(module).values() if isinstance(value, AgentDefinition) or _low_level(value)
    ]


def _low_level(value: Any) -> bool:
    return (
        not isinstance(value, type | ModuleType)
        and isinstance(getattr(value, "name", None), str)
        and isinstance(getattr(value, "description", None), str)
        and callable(getattr(value, "validate", None))
        and callable(getattr(value, "decide", None))
    )


def load_agents(spec: str) -> dict[str, Any]:
    """name -> agent (an `AgentDefinition`, or a low-level agent instance) for every agent in the
    comma-separated entries of `spec`."""
    found: dict[str, Any] = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        try:
            module = load_module(entry)
        except AgentLoadError:
            raise
        except Exception as exc:
            raise AgentLoadError(f"cannot load agents from {entry}: {type(exc).__name__}: {exc}") from exc
        definitions = definitions_in(module)
        if not definitions:
            raise AgentLoadError(f"{entry} defines no agent (an @agent function or an agent instance)")
        for definition in definitions:
            other = found.get(definition.name)
            if other is not None and other is not definition:
                raise AgentLoadError(
                    f"agent {definition.name!r} is defined twice ({_where(other)}, {_where(definition)})"
                )
            found[definition.name] = definition
    return found


def _where(agent: Any) -> str:
    if isinstance(agent, AgentDefinition):
        return agent.source_file
    return getattr(type(agent), "__module__", "?")
