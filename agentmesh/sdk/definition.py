"""`@agent`: an async function declared as a durable agent, with its name, version and input schema."""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")


class InputSchema:
    """An input declaration: a pydantic (v2) model or a JSON Schema dict. One place checks input,
    turns it into what the agent receives, and says what it accepts.

    A JSON Schema is read as draft 2020-12, with one tightening: "integer" means a JSON integer
    (`2`, not `2.0`), as a Python agent expects. The `default` of each top-level property is filled
    in where the input leaves it out, as pydantic does for a model's fields."""

    def __init__(self, model: Any = None, schema: dict[str, Any] | None = None) -> None:
        self.model, self.schema = model, schema
        self._validator: Any = None

    @classmethod
    def of(cls, declared: Any) -> InputSchema:
        if declared is None or isinstance(declared, InputSchema):
            return declared or cls()
        if isinstance(declared, dict):
            return cls(schema=declared)
        if hasattr(declared, "model_validate") and hasattr(declared, "model_json_schema"):
            return cls(model=declared)
        raise TypeError(f"an input schema is a pydantic model or a JSON Schema dict, not {declared!r}")

    def json_schema(self) -> dict[str, Any] | None:
        if self.model is not None:
            return self.model.model_json_schema()  # type: ignore[no-any-return]
        return self.schema

    def violations(self, value: Any) -> list[tuple[str, str]]:
        """(field, what is wrong) for each problem; empty when the value fits."""
        if self.model is not None:
            from pydantic import ValidationError

            try:
                self.model.model_validate(value)
            except ValidationError as exc:
                return [(".".join(str(p) for p in e["loc"]) or "input", e["msg"]) for e in exc.errors()]
            return []
        if self.schema is not None:
            if self._validator is None:
                self._validator = _strict_validator(self.schema)
            errors = sorted(
                self._validator.iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path]
            )
            # dict.fromkeys: in order, once each (jsonschema reports each missing property apart).
            return list(dict.fromkeys(v for error in errors for v in _named(error)))
        return []

    def parse(self, value: Any) -> Any:
        if self.model is not None:
            return self.model.model_validate(value)
        defaults = {
            name: prop["default"]
            for name, prop in (self.schema or {}).get("properties", {}).items()
            if isinstance(prop, dict) and "default" in prop
        }
        if defaults and isinstance(value, dict):
            return {**copy.deepcopy(defaults), **value}
        return value


def _strict_validator(schema: dict[str, Any]) -> Any:
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool)
    )
    return jsonschema.validators.extend(base, type_checker=checker)(schema)


def _named(error: Any) -> list[tuple[str, str]]:
    """(field, what is wrong) for one schema error; a missing or an unexpected property is named as
    the field itself, not as the object holding it."""
    where = ".".join(str(p) for p in error.absolute_path)
    prefix = f"{where}." if where else ""
    whole = [(where or "input", error.message)]
    value = error.instance if isinstance(error.instance, dict) else {}
    if error.validator == "required":
        missing = [name for name in error.validator_value if name not in value]
        return [(f"{prefix}{name}", "required") for name in missing] or whole
    if error.validator == "additionalProperties" and error.validator_value is False:
        known = set(error.schema.get("properties", {}))
        extra = sorted(name for name in value if name not in known)
        return [(f"{prefix}{name}", "unknown field") for name in extra] or whole
    return whole


AgentFn = Callable[..., Coroutine[Any, Any, Any]]


@dataclass(frozen=True)
class AgentDefinition:
    name: str
    version: str
    fn: AgentFn
    description: str
    input: InputSchema

    @property
    def source_file(self) -> str:
        return self.fn.__code__.co_filename

    def __call__(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        return self.fn(*args, **kwargs)


def agent(
    name: str | None = None,
    *,
    version: str = "1",
    input: Any = None,  # noqa: A002 - the agent's input schema
    description: str | None = None,
) -> Callable[[AgentFn], AgentDefinition]:
    """Declare `async def fn(ctx, inp)` as a durable agent. `input` (a pydantic model or a JSON Schema)
    is checked at submit time, so a bad input is refused with 400 before the task exists."""

    def wrap(fn: AgentFn) -> AgentDefinition:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@agent needs an async function, got {fn!r}")
        agent_name = name or fn.__name__.replace("_", "-")
        if not NAME.match(agent_name):
            raise ValueError(f"agent name {agent_name!r}: lower case letters, digits and _ . - (up to 63)")
        doc = description if description is not None else (inspect.getdoc(fn) or "").split("\n\n")[0]
        return AgentDefinition(agent_name, str(version), fn, " ".join(doc.split()), InputSchema.of(input))

    return wrap
