"""Request parsing and validation for the HTTP API: pure functions, no I/O.

Everything a client sends is checked here before it reaches the coordinator, so that bad input
gets a precise 400 (with one `field_violations` entry per problem) and can neither crash nor stall
the gateway: bodies are size-capped before parsing, JSON nesting is capped, non-standard JSON
(NaN, Infinity, 1e999) is refused because it could not be re-serialized as JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import malformed_json
from services.runtime.errors import InvalidArgument, Unauthenticated
from services.runtime.wire import STATE_VALUES

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MAX = 2**63 - 1
MAX_AGENT_LEN = 128
MAX_IDEMPOTENCY_KEY_LEN = 256
MAX_LABELS = 64
MAX_LABEL_KEY_LEN = 128
MAX_LABEL_VALUE_LEN = 1024
MAX_REASON_LEN = 1024
MAX_CURSOR_LEN = 1024
MAX_API_KEY_LEN = 1024
DEFAULT_LIST_LIMIT = 50
MALFORMED_AUTH = "MALFORMED_AUTHORIZATION"
MAX_LIST_LIMIT = 1000

BUDGET_FIELDS = frozenset({"budget.usd", "budget.tokens"})
SUBMIT_FIELDS = frozenset({"agent", "input", "priority", "budget", "deadline_s", "idempotency_key", "labels"})


class Violations:
    """Collects every problem with a request, so one 400 names them all."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field_name: str, description: str) -> None:
        self.items.append((field_name, description))

    def raise_if_any(self, message: str = "invalid request") -> None:
        if self.items:
            summary = "; ".join(f"{f}: {d}" for f, d in self.items[:5])
            raise InvalidArgument(f"{message}: {summary}", field_violations=list(self.items))


# --- JSON ------------------------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def json_depth_exceeds(value: Any, max_depth: int) -> bool:
    """Whether arrays/objects nest deeper than `max_depth` (a scalar is depth 0). Iterative: no recursion."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth + 1 > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_json(raw: bytes | str, max_depth: int) -> Any:
    """Parse strict JSON (RFC 8259) or raise InvalidArgument with reason MALFORMED_JSON / JSON_TOO_DEEP."""
    if not raw or not raw.strip():
        raise malformed_json("request body is empty; expected JSON")
    try:
        value = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        # The C parser recurses once per nesting level and gives up near the interpreter's limit.
        raise InvalidArgument(f"JSON nests deeper than {max_depth} levels", reason="JSON_TOO_DEEP") from None
    except UnicodeDecodeError:
        raise malformed_json("request body is not UTF-8 encoded JSON") from None
    except json.JSONDecodeError as exc:
        raise malformed_json(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # NaN/Infinity, huge numbers, integers past the digit limit
        raise malformed_json(f"malformed JSON: {exc}") from None
    if json_depth_exceeds(value, max_depth):
        raise InvalidArgument(f"JSON nests deeper than {max_depth} levels", reason="JSON_TOO_DEEP")
    return value


def parse_json_object(raw: bytes | str, max_depth: int, *, allow_empty: bool = False) -> dict[str, Any]:
    if allow_empty and (not raw or not raw.strip()):
        return {}
    value = parse_json(raw, max_depth)
    if not isinstance(value, dict):
        raise InvalidArgument(
            f"request body must be a JSON object, not {_json_type(value)}",
            field_violations=[("body", "must be a JSON object")],
        )
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# --- field checks ----------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _unknown_fields(body: Mapping[str, Any], known: frozenset[str], bad: Violations) -> None:
    # Strict on purpose: a misspelt optional field ("priorty") would otherwise be ignored silently.
    for name in sorted(set(body) - known):
        bad.add(name[:100], "unknown field")


def _check_string(value: Any, name: str, max_len: int, bad: Violations, *, required: bool = False) -> str:
    if value is None:
        if required:
            bad.add(name, "is required")
        return ""
    if not isinstance(value, str):
        bad.add(name, f"must be a string, not {_json_type(value)}")
        return ""
    if required and not value.strip():
        bad.add(name, "must not be empty")
    if len(value) > max_len:
        bad.add(name, f"must be at most {max_len} characters")
    return value


def _check_budget(value: Any, bad: Violations) -> tuple[float, int]:
    if value is None:
        return 0.0, 0
    if _is_number(value):
        if value < 0:
            bad.add("budget", "must not be negative")
        return float(value), 0
    if not isinstance(value, dict):
        bad.add("budget", f"must be a number (USD) or an object {{usd, tokens}}, not {_json_type(value)}")
        return 0.0, 0
    _unknown_fields({f"budget.{k}": v for k, v in value.items()}, BUDGET_FIELDS, bad)
    usd, tokens = value.get("usd"), value.get("tokens")
    if usd is not None and (not _is_number(usd) or usd < 0):
        bad.add("budget.usd", "must be a non-negative number")
        usd = None
    if tokens is not None and (not _is_int(tokens) or not 0 <= tokens <= INT64_MAX):
        bad.add("budget.tokens", "must be a non-negative integer")
        tokens = None
    return float(usd or 0.0), int(tokens or 0)


def _check_labels(value: Any, bad: Violations) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        bad.add("labels", f"must be an object of string to string, not {_json_type(value)}")
        return {}
    if len(value) > MAX_LABELS:
        bad.add("labels", f"must have at most {MAX_LABELS} entries")
    labels: dict[str, str] = {}
    for key, item in value.items():
        where = f"labels.{key[:100]}"
        if not key or len(key) > MAX_LABEL_KEY_LEN:
            bad.add(where, f"label names must be 1 to {MAX_LABEL_KEY_LEN} characters")
        elif not isinstance(item, str):
            bad.add(where, f"must be a string, not {_json_type(item)}")
        elif len(item) > MAX_LABEL_VALUE_LEN:
            bad.add(where, f"must be at most {MAX_LABEL_VALUE_LEN} characters")
        else:
            labels[key] = item
    return labels


# --- requests --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitRequest:
    agent: str
    input_json: str
    priority: int = 0
    budget_usd: float = 0.0
    budget_tokens: int = 0
    deadline_s: float = 0.0
    idempotency_key: str = ""
    labels: dict[str, str] = field(default_factory=dict)


def validate_submit(body: Mapping[str, Any], idempotency_header: str | None = None) -> SubmitRequest:
    """Check a `POST /v1/tasks` body; the `Idempotency-Key` header may stand in for the body field."""
    bad = Violations()
    _unknown_fields(body, SUBMIT_FIELDS, bad)
    agent = _check_string(body.get("agent"), "agent", MAX_AGENT_LEN, bad, required=True)

    input_json = "null"
    if "input" not in body:
        bad.add("input", "is required (any JSON value)")
    else:
        # Already parsed as strict JSON, so this cannot fail; the coordinator gets canonical text.
        input_json = json.dumps(body["input"])

    priority = body.get("priority")
    if priority is None:
        priority = 0
    elif not _is_int(priority):
        bad.add("priority", f"must be an integer, not {_json_type(priority)}")
        priority = 0
    elif not INT32_MIN <= priority <= INT32_MAX:
        bad.add("priority", "must fit in 32 bits")
        priority = 0

    budget_usd, budget_tokens = _check_budget(body.get("budget"), bad)

    deadline_s = body.get("deadline_s")
    if deadline_s is None:
        deadline_s = 0.0
    elif not _is_number(deadline_s) or deadline_s < 0:
        bad.add("deadline_s", "must be a non-negative number of seconds")
        deadline_s = 0.0

    key = _check_string(body.get("idempotency_key"), "idempotency_key", MAX_IDEMPOTENCY_KEY_LEN, bad)
    if idempotency_header is not None:
        header_key = idempotency_header.strip()
        if not header_key or len(header_key) > MAX_IDEMPOTENCY_KEY_LEN:
            bad.add("Idempotency-Key", f"header must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters")
        elif key and key != header_key:
            bad.add("idempotency_key", "differs from the Idempotency-Key header")
        else:
            key = header_key

    labels = _check_labels(body.get("labels"), bad)
    bad.raise_if_any("invalid task")
    return SubmitRequest(
        agent=agent,
        input_json=input_json,
        priority=priority,
        budget_usd=budget_usd,
        budget_tokens=budget_tokens,
        deadline_s=float(deadline_s),
        idempotency_key=key,
        labels=labels,
    )


def validate_cancel(body: Mapping[str, Any]) -> str:
    """The optional `{reason}` of `POST /v1/tasks/{id}/cancel`; returns the reason ("" if none)."""
    bad = Violations()
    _unknown_fields(body, frozenset({"reason"}), bad)
    reason = _check_string(body.get("reason"), "reason", MAX_REASON_LEN, bad)
    bad.raise_if_any("invalid cancel request")
    return reason


RESOLVE_ACTIONS = ("resume", "reset", "fail")


@dataclass(frozen=True)
class Resolve:
    action: str
    version: str
    to_decision: int


def validate_resolve(body: Mapping[str, Any]) -> Resolve:
    """The `{action, version?, to_decision?}` of `POST /v1/tasks/{id}/resolve`."""
    bad = Violations()
    _unknown_fields(body, frozenset({"action", "version", "to_decision"}), bad)
    action = _check_string(body.get("action"), "action", 16, bad, required=True)
    if action and action not in RESOLVE_ACTIONS:
        bad.add("action", "must be resume, reset or fail")
    version = _check_string(body.get("version"), "version", 128, bad)
    to_decision = body.get("to_decision", 0)
    if isinstance(to_decision, bool) or not isinstance(to_decision, int) or not 0 <= to_decision < 2**31:
        bad.add("to_decision", "must be an integer from 0")
        to_decision = 0
    elif to_decision and action != "reset":
        bad.add("to_decision", "is only for reset")
    bad.raise_if_any("invalid resolve request")
    return Resolve(action, version, to_decision)


def validate_input(body: Mapping[str, Any]) -> Any:
    """The `{data}` of `POST /v1/tasks/{id}/input`; returns data (any JSON value, null included)."""
    bad = Violations()
    _unknown_fields(body, frozenset({"data"}), bad)
    if "data" not in body:
        bad.add("data", "is required (any JSON value)")
    bad.raise_if_any("invalid input")
    return body["data"]


@dataclass(frozen=True)
class ListQuery:
    state: int = 0
    limit: int = DEFAULT_LIST_LIMIT
    cursor: str = ""


def validate_list_query(params: Mapping[str, str]) -> ListQuery:
    """`?state=&limit=&cursor=`: state is a name (RUNNING, running); empty state means every state."""
    bad = Violations()
    state = 0
    state_text = (params.get("state") or "").strip()
    if state_text:
        name = state_text.upper().removeprefix("TASK_STATE_")
        if name not in STATE_VALUES:
            bad.add("state", f"unknown state {state_text[:40]!r}; one of {', '.join(STATE_VALUES)}")
        else:
            state = STATE_VALUES[name]
    limit = DEFAULT_LIST_LIMIT
    limit_text = (params.get("limit") or "").strip()
    if limit_text:
        parsed = _parse_int(limit_text)
        if parsed is None or not 1 <= parsed <= MAX_LIST_LIMIT:
            bad.add("limit", f"must be an integer from 1 to {MAX_LIST_LIMIT}")
        else:
            limit = parsed
    cursor = params.get("cursor") or ""
    if len(cursor) > MAX_CURSOR_LEN:
        bad.add("cursor", f"must be at most {MAX_CURSOR_LEN} characters")
    bad.raise_if_any("invalid query")
    return ListQuery(state=state, limit=limit, cursor=cursor)


def _parse_int(text: str) -> int | None:
    # int() alone would accept "1_000", " 7" and 4000-digit numbers; accept plain decimal digits only.
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        return None
    return int(text)


def resume_after(last_event_id: str | None, after: str | None) -> int:
    """The seq to resume an event stream after: the larger of `Last-Event-ID` and `?after=`."""
    bad = Violations()
    best = 0
    for name, text in (("Last-Event-ID", last_event_id), ("after", after)):
        if text is None or not text.strip():
            continue
        value = _parse_int(text)
        if value is None:
            bad.add(name, "must be a non-negative integer (an event seq)")
        else:
            best = max(best, value)
    bad.raise_if_any("invalid resume position")
    return best


def bearer_key(header: str | None) -> str | None:
    """The API key of an `Authorization: Bearer <key>` header; None when there is no header.

    The key itself is judged by the coordinator; here only its form, because it travels as gRPC
    metadata, which takes printable ASCII only.
    """
    if header is None:
        return None
    scheme, _, key = header.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthenticated("the Authorization header must be 'Bearer <key>'", reason=MALFORMED_AUTH)
    if len(key) > MAX_API_KEY_LEN or not all(33 <= ord(ch) <= 126 for ch in key):
        raise Unauthenticated("the API key must be printable ASCII without spaces", reason=MALFORMED_AUTH)
    return key
