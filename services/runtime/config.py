"""Configuration: one frozen dataclass per service, read once from flags and `AGENTMESH_*` variables.

Every field `some_name` is settable as `--some-name` or `AGENTMESH_SOME_NAME`; a flag wins over the
variable, the variable over the default. This module is the only place that reads `os.environ`
for configuration; services receive the resulting object and pass it down.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, get_type_hints

ENV_PREFIX = "AGENTMESH_"

C = TypeVar("C")


def setting(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse
    """A config field with its documentation; `help` feeds `--help` and docs/configuration.md."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class CommonConfig:
    """Addresses of the whole mesh (every service may call or publish to any of them) and shared knobs."""

    coordinator_addr: str = setting("127.0.0.1:50051", "coordinator gRPC address")
    planner_addr: str = setting("127.0.0.1:50052", "planner gRPC address")
    executor_addr: str = setting("127.0.0.1:50053", "executor gRPC address")
    inference_addr: str = setting("127.0.0.1:50054", "inference gRPC address")
    gateway_addr: str = setting("127.0.0.1:8080", "gateway HTTP address")
    bus_pub_addr: str = setting("tcp://127.0.0.1:5559", "bus side that publishers connect to")
    bus_sub_addr: str = setting("tcp://127.0.0.1:5560", "bus side that subscribers connect to")
    data_dir: str = setting("./.agentmesh", "directory for the store, keys and logs")
    admin_key: str = setting(
        "",
        "the operator's key: the coordinator's Admin service (API keys, audit log) and every service's "
        "Debug service (default: DATA_DIR/admin.key, made if missing)",
    )
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR")
    log_format: str = setting("text", "text or json")
    metrics_port: int = setting(0, "Prometheus metrics HTTP port on 127.0.0.1 (0: off)")
    shutdown_grace_s: float = setting(5.0, "time in-flight work gets to finish on SIGTERM")


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _converter(kind: Any):
    if kind is bool:
        return _parse_bool
    if kind in (int, float, str):
        return kind
    raise TypeError(f"unsupported config type {kind!r}")


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = get_type_hints(cls)
    for field in dataclasses.fields(cls):
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            type=_converter(hints[field.name]),
            default=None,
            help=f"{field.metadata.get('help', '')} (env {env_name(field.name)}, default {field.default!r})",
        )


def load(
    cls: type[C],
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    prog: str | None = None,
) -> C:
    """Build `cls` from flags, then environment variables, then defaults. Bad values exit with usage."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog=prog)
    add_arguments(parser, cls)
    args = parser.parse_args(list(argv or []))
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        flag_value = getattr(args, field.name)
        if flag_value is not None:
            values[field.name] = flag_value
            continue
        raw = environ.get(env_name(field.name))
        if raw is not None:
            try:
                values[field.name] = _converter(hints[field.name])(raw)
            except ValueError as exc:
                parser.error(f"{env_name(field.name)}: {exc}")
    return cls(**values)


def describe(cls: type) -> list[tuple[str, str, Any, str]]:
    """(flag, env var, default, help) for every field: the source of docs/configuration.md."""
    return [
        ("--" + f.name.replace("_", "-"), env_name(f.name), f.default, f.metadata.get("help", ""))
        for f in dataclasses.fields(cls)
    ]
