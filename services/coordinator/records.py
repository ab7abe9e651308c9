"""SQL operations on the store, each a plain function of a connection, run on the store thread.

Rows become protobuf `Task` messages here and nowhere else. Functions that change a task also
append the events describing the change and return them, so the caller can publish them after
the commit.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from typing import Any

from protos.agentmesh.v1 import common_pb2 as pb
from services.coordinator.store import EventRow, LeaseLost, append_events
from services.runtime.errors import AlreadyExists, FailedPrecondition, NotFound
from services.runtime.wire import STATE_NAMES, TERMINAL_STATES, action_place

# sqlite3's connection, or backends.PgConnection, which reads the same.
Connection = Any

QUEUED, RUNNING, WAITING = pb.TASK_STATE_QUEUED, pb.TASK_STATE_RUNNING, pb.TASK_STATE_WAITING
SUCCEEDED, FAILED, CANCELLED = pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELLED

TASK_COLUMNS = (
    "t.id, t.tenant, t.agent, b.input, t.priority, t.budget_usd, t.budget_tokens, t.deadline, t.labels, "
    "t.idem_key, t.parent_id, t.state, b.result, t.error, t.cost, t.decisions, t.last_seq, "
    "t.cancel_requested, t.input_prompt, t.created_at, t.updated_at, t.finished_at, t.agent_version, t.held"
)
TASK_FROM = "tasks t JOIN task_blobs b ON b.id = t.id"


def new_task_id() -> str:
    """Time-ordered ids: listing by id is listing by submission time."""
    return f"{time.time_ns():016x}{secrets.token_hex(4)}"


def row_to_task(row: tuple[Any, ...]) -> pb.Task:
    (
        tid,
        tenant,
        agent,
        input_json,
        priority,
        budget_usd,
        budget_tokens,
        deadline,
        labels,
        idem_key,
        parent_id,
        state,
        result,
        error,
        cost,
        decisions,
        last_seq,
        cancel_requested,
        input_prompt,
        created_at,
        updated_at,
        finished_at,
        agent_version,
        held,
    ) = row
    task = pb.Task(
        id=tid,
        tenant=tenant,
        agent=agent,
        input_json=input_json,
        priority=priority,
        budget=pb.Budget(usd=budget_usd, tokens=budget_tokens),
        deadline=deadline,
        labels=json.loads(labels),
        idempotency_key=idem_key or "",
        parent_id=parent_id or "",
        state=state,
        result_json=result,
        decisions=decisions,
        last_seq=last_seq,
        cancel_requested=bool(cancel_requested),
        input_prompt=input_prompt,
        created_at=created_at,
        updated_at=updated_at,
        finished_at=finished_at,
        agent_version=agent_version,
        held=bool(held),
    )
    if error:
        task.error.ParseFromString(error)
    if cost:
        task.cost.ParseFromString(cost)
    return task


def state_event(state: int, **extra: Any) -> tuple[str, str]:
    data = {"state": STATE_NAMES[state], "terminal": state in TERMINAL_STATES, **extra}
    return "state", json.dumps(data)


def get_task(conn: Connection, task_id: str, tenant: str | None = None) -> pb.Task:
    """The task, or NotFound; with `tenant`, another tenant's task is NotFound too."""
    row = conn.execute(f"SELECT {TASK_COLUMNS} FROM {TASK_FROM} WHERE t.id = ?", (task_id,)).fetchone()
    if row is None or (tenant is not None and row[1] != tenant):
        raise NotFound(f"no task {task_id!r}", reason="TASK_NOT_FOUND")
    return row_to_task(row)


def insert_task(
    conn: Connection,
    task: pb.Task,
    request_hash: str,
    parent_action: str = "",
    lease: tuple[str, float] | None = None,
) -> tuple[pb.Task, bool, list[EventRow]]:
    """Insert a QUEUED task; (task, created, events). An idempotency key reused with the same request
    returns the first task; with a different request it is refused. `lease`: (owner, until), the
    coordinator that queues it."""
    if task.idempotency_key:
        row = conn.execute(
            f"SELECT {TASK_COLUMNS}, t.request_hash FROM {TASK_FROM} WHERE t.tenant = ? AND t.idem_key = ?",
            (task.tenant, task.idempotency_key),
        ).fetchone()
        if row is not None:
            if row[-1] != request_hash:
                raise AlreadyExists(
                    f"idempotency key {task.idempotency_key!r} was used for a different request",
                    reason="IDEMPOTENCY_KEY_REUSED",
                    details={"task_id": row[0]},
                )
            return row_to_task(row[:-1]), False, []
    conn.execute(
        "INSERT INTO tasks (id, tenant, agent, priority, budget_usd, budget_tokens, deadline, labels, "
        "idem_key, request_hash, parent_id, parent_action, state, cost, created_at, updated_at, owner, "
        "lease_until, agent_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            task.id,
            task.tenant,
            task.agent,
            task.priority,
            task.budget.usd,
            task.budget.tokens,
            task.deadline,
            json.dumps(dict(task.labels)),
            task.idempotency_key or None,
            request_hash,
            task.parent_id or None,
            parent_action or None,
            QUEUED,
            pb.Cost().SerializeToString(),
            task.created_at,
            task.created_at,
            *(lease or (None, None)),
            task.agent_version,
        ),
    )
    conn.execute("INSERT INTO task_blobs (id, input) VALUES (?, ?)", (task.id, task.input_json))
    events = append_events(conn, task.id, [state_event(QUEUED)], task.created_at)
    task.state = QUEUED
    task.last_seq = events[-1].seq
    return task, True, events


def list_tasks(
    conn: Connection, tenant: str, state: int, limit: int, cursor: str
) -> tuple[list[pb.Task], str]:
    clauses, params = ["t.tenant = ?"], [tenant]
    if state:
        clauses.append("t.state = ?")
        params.append(state)
    if cursor:
        clauses.append("t.id < ?")
        params.append(cursor)
    rows = conn.execute(
        f"SELECT {TASK_COLUMNS} FROM {TASK_FROM} WHERE {' AND '.join(clauses)} ORDER BY t.id DESC LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    tasks = [row_to_task(r) for r in rows[:limit]]
    next_cursor = tasks[-1].id if len(rows) > limit else ""
    return tasks, next_cursor


def set_state(
    conn: Connection,
    task_id: str,
    state: int,
    *,
    now: float | None = None,
    extra_events: Iterable[tuple[str, str]] = (),
    **event_data: Any,
) -> list[EventRow]:
    now = time.time() if now is None else now
    return append_events(  # type: ignore[return-value] - a missing task raises
        conn,
        task_id,
        [*extra_events, state_event(state, **event_data)],
        now,
        also_set="state = ?, updated_at = ?, wake_at = NULL, input_prompt = ''",
        also_params=(state, now),
    )


def finish(
    conn: Connection,
    task_id: str,
    state: int,
    *,
    result_json: str = "",
    error: pb.TaskError | None = None,
    now: float | None = None,
    fence: str | None = None,
) -> list[EventRow]:
    """Move a task to a terminal state; its terminal 'state' event is always its last event.
    A waiting parent is marked due, so its join is looked at again even after a restart. With
    `fence`, only while that coordinator holds the task (else LeaseLost)."""
    now = time.time() if now is None else now
    current = conn.execute("SELECT state, parent_id, owner FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if current is None or current[0] in TERMINAL_STATES:
        return []
    if fence is not None and current[2] != fence:
        raise LeaseLost(f"task {task_id} is held by {current[2] or 'nobody'} now")
    if result_json:
        conn.execute("UPDATE task_blobs SET result = ? WHERE id = ?", (result_json, task_id))
    conn.execute(
        "UPDATE tasks SET state = ?, error = ?, updated_at = ?, finished_at = ?, wake_at = NULL, "
        "input_prompt = '', held = 0 WHERE id = ?",
        (
            state,
            error.SerializeToString() if error is not None and error.reason else None,
            now,
            now,
            task_id,
        ),
    )
    data: dict[str, Any] = {}
    if error is not None and error.reason:
        data = {"reason": error.reason, "message": error.message}
    wake_durably(conn, current[1])
    return append_events(conn, task_id, [state_event(state, **data)], now)


def wake_durably(conn: Connection, task_id: str | None) -> None:
    """Make a WAITING task due now. The wake-up sweep picks it up, also after a restart; an
    in-memory wake only makes it sooner."""
    if task_id:
        conn.execute(
            "UPDATE tasks SET wake_at = ? WHERE id = ? AND state = ?", (time.time(), task_id, WAITING)
        )


def request_cancel(
    conn: Connection, task_id: str, tenant: str | None, reason: str
) -> tuple[pb.Task, bool, list[EventRow]]:
    """Record the cancel intent durably. Returns (task, newly_requested, events).
    Idempotent; FailedPrecondition for a task that finished other than by cancellation."""
    task = get_task(conn, task_id, tenant)
    if task.state in TERMINAL_STATES:
        if task.state == CANCELLED:
            return task, False, []
        raise FailedPrecondition(
            f"task {task_id} already finished ({STATE_NAMES[task.state]})",
            reason="TASK_FINISHED",
            details={"state": STATE_NAMES[task.state]},
        )
    if task.cancel_requested:
        return task, False, []
    conn.execute("UPDATE tasks SET cancel_requested = 1, updated_at = ? WHERE id = ?", (time.time(), task_id))
    events = append_events(
        conn, task_id, [("log", json.dumps({"message": "cancel requested", "reason": reason}))]
    )
    task.cancel_requested = True
    return task, True, events


def unfinished_children(conn: Connection, parent_id: str) -> list[str]:
    rows = conn.execute("SELECT id FROM tasks WHERE parent_id = ? AND state IN (1, 2, 3)", (parent_id,))
    return [r[0] for r in rows]


def events_after(conn: Connection, task_id: str, after_seq: int, limit: int) -> list[EventRow]:
    rows = conn.execute(
        "SELECT task_id, seq, ts, kind, data FROM events WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        (task_id, after_seq, limit),
    )
    return [EventRow(*r) for r in rows]


def task_progress(conn: Connection, task_id: str) -> tuple[int, int] | None:
    """(state, last_seq) of a task, or None if it does not exist."""
    return conn.execute("SELECT state, last_seq FROM tasks WHERE id = ?", (task_id,)).fetchone()


def add_input(conn: Connection, task_id: str, tenant: str, data_json: str) -> tuple[pb.Task, list[EventRow]]:
    task = get_task(conn, task_id, tenant)
    if task.state in TERMINAL_STATES:
        raise FailedPrecondition(
            f"task {task_id} already finished ({STATE_NAMES[task.state]})",
            reason="TASK_FINISHED",
            details={"state": STATE_NAMES[task.state]},
        )
    (seq,) = conn.execute(
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM inputs WHERE task_id = ?", (task_id,)
    ).fetchone()
    conn.execute("INSERT INTO inputs (task_id, seq, data) VALUES (?, ?, ?)", (task_id, seq, data_json))
    wake_durably(conn, task_id)
    events = append_events(
        conn, task_id, [("log", json.dumps({"message": "input received", "input_seq": seq}))]
    )
    return task, events


def take_input(conn: Connection, task_id: str, action_id: str) -> str | None:
    """The oldest unconsumed input, marked consumed by `action_id`; an action that already consumed
    one (before a crash) gets the same one back."""
    row = conn.execute(
        "SELECT data FROM inputs WHERE task_id = ? AND consumed_by = ?", (task_id, action_id)
    ).fetchone()
    if row is not None:
        return row[0]
    row = conn.execute(
        "SELECT seq, data FROM inputs WHERE task_id = ? AND consumed_by IS NULL ORDER BY seq LIMIT 1",
        (task_id,),
    ).fetchone()
    if row is None:
        return None
    conn.execute(
        "UPDATE inputs SET consumed_by = ? WHERE task_id = ? AND seq = ?", (action_id, task_id, row[0])
    )
    return row[1]


def load_decision(
    conn: Connection, task_id: str, seq: int
) -> tuple[pb.Decision, float, dict[str, pb.ActionResult]]:
    body, created_at = conn.execute(
        "SELECT body, created_at FROM decisions WHERE task_id = ? AND seq = ?", (task_id, seq)
    ).fetchone()
    decision = pb.Decision()
    decision.ParseFromString(body)
    results = {}
    for action_id, result_body in conn.execute(
        "SELECT action_id, body FROM results WHERE task_id = ? AND decision_seq = ?", (task_id, seq)
    ):
        result = pb.ActionResult()
        result.ParseFromString(result_body)
        results[action_id] = result
    return decision, created_at, results


def load_history(
    conn: Connection, task_id: str, through: int
) -> list[tuple[int, pb.Decision, dict[str, pb.ActionResult]]]:
    """Decisions 1..`through` with their actions' results: the journal an SDK agent replays."""
    results: dict[int, dict[str, pb.ActionResult]] = {}
    for seq, action_id, body in conn.execute(
        "SELECT decision_seq, action_id, body FROM results WHERE task_id = ? AND decision_seq <= ?",
        (task_id, through),
    ):
        result = pb.ActionResult()
        result.ParseFromString(body)
        results.setdefault(seq, {})[action_id] = result
    history = []
    for seq, body in conn.execute(
        "SELECT seq, body FROM decisions WHERE task_id = ? AND seq <= ? ORDER BY seq", (task_id, through)
    ):
        decision = pb.Decision()
        decision.ParseFromString(body)
        history.append((seq, decision, results.get(seq, {})))
    return history


def load_open(
    conn: Connection, task_id: str
) -> tuple[list[tuple[pb.Action, float]], list[pb.ActionResult], list[str]] | None:
    """A task whose decisions are asked for as each action settles (Decision.on_each_settle) has
    actions of several decisions open at once. Its open actions (each with its decision's time),
    the results no decision was taken on yet (in the order they settled), and the cancels those
    decisions asked for (SEQ.INDEX). Read from `open_from`, the oldest decision the last
    checkpoint still had anything open of; None for a task that has always decided per wave."""
    (since,) = conn.execute("SELECT open_from FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if not since:
        return None
    results: dict[str, pb.ActionResult] = {}
    settled: dict[str, int] = {}
    for action_id, body, order in conn.execute(
        "SELECT action_id, body, settled FROM results WHERE task_id = ? AND decision_seq >= ?",
        (task_id, since),
    ):
        results[action_id] = pb.ActionResult.FromString(body)
        settled[action_id] = order
    open_actions: list[tuple[pb.Action, float]] = []
    answered: set[str] = set()
    cancels: list[str] = []
    for body, created_at in conn.execute(
        "SELECT body, created_at FROM decisions WHERE task_id = ? AND seq >= ? ORDER BY seq", (task_id, since)
    ):
        decision = pb.Decision.FromString(body)
        answered.update(decision.answered)
        cancels += decision.cancel_actions
        open_actions += [(a, created_at) for a in decision.actions if a.id not in results]
    undelivered = [i for i in results if i not in answered]
    undelivered.sort(key=lambda i: (settled[i], *action_place(i)))
    return open_actions, [results[i] for i in undelivered], cancels


def wants_cleanup(conn: Connection, task_id: str, seq: int) -> bool:
    """Whether the task's latest decision asks to hear of a cancel (Decision.handles_cancel)."""
    if not seq:
        return False
    row = conn.execute("SELECT body FROM decisions WHERE task_id = ? AND seq = ?", (task_id, seq)).fetchone()
    return row is not None and pb.Decision.FromString(row[0]).handles_cancel


def save_decision(
    conn: Connection,
    task_id: str,
    seq: int,
    decision: pb.Decision,
    summary: dict[str, Any],
    fence: str | None = None,
    pin_version: str = "",
    open_from: int = 0,
) -> tuple[float, list[EventRow]]:
    """The checkpoint: the decision (holding the agent's new memo), atomically with its event.
    `pin_version`: the agent version a task without one took this decision on (its first).
    `open_from`: see `load_open`."""
    now = time.time()
    conn.execute(
        "INSERT INTO decisions (task_id, seq, body, created_at) VALUES (?, ?, ?, ?)",
        (task_id, seq, decision.SerializeToString(), now),
    )
    also_set, also_params = "decisions = ?, updated_at = ?", (seq, now)
    if pin_version:
        also_set, also_params = also_set + ", agent_version = ?", (*also_params, pin_version)
    if open_from:
        also_set, also_params = also_set + ", open_from = ?", (*also_params, open_from)
    events = append_events(
        conn,
        task_id,
        [("decision", json.dumps(summary))],
        now,
        also_set=also_set,
        also_params=also_params,
        fence=fence,
    )
    return now, events  # type: ignore[return-value] - a missing task raises


def save_result(
    conn: Connection,
    task_id: str,
    decision_seq: int,
    result: pb.ActionResult,
    cost: pb.Cost,
    events: list[tuple[str, str]],
    fence: str | None = None,
) -> list[EventRow] | None:
    """Persist one action's result and the task's new total cost. None if the task already finished
    (a late result of a cancelled task is dropped, so the terminal event stays last)."""
    rows = append_events(
        conn,
        task_id,
        events,
        live_only=True,
        also_set="cost = ?, updated_at = ?",
        also_params=(cost.SerializeToString(), time.time()),
        fence=fence,
    )
    if rows is None:
        return None
    # `settled`: the seq of its first event, which orders results by when they came.
    conn.execute(
        "INSERT INTO results (task_id, action_id, decision_seq, body, settled) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (task_id, action_id) DO UPDATE SET decision_seq = excluded.decision_seq, "
        "body = excluded.body, settled = excluded.settled",
        (task_id, result.action_id, decision_seq, result.SerializeToString(), rows[0].seq if rows else 0),
    )
    return rows


def append_if_live(conn: Connection, task_id: str, events: list[tuple[str, str]]) -> list[EventRow]:
    """The events, unless the task finished (then nothing: its terminal event stays its last)."""
    return append_events(conn, task_id, events, live_only=True) or []


def park(
    conn: Connection,
    task_id: str,
    wake_at: float | None,
    prompt: str,
    waiting_for_input: bool,
    events: list[tuple[str, str]],
) -> list[EventRow] | None:
    """Move a running task to WAITING. None (and nothing changed) if an input is already queued for a
    waiting action: then the task must go on running instead. This check and SendInput's insert are
    serialized by the store, so an input can never arrive unseen between the check and the park."""
    if (
        waiting_for_input
        and conn.execute(
            "SELECT 1 FROM inputs WHERE task_id = ? AND consumed_by IS NULL LIMIT 1", (task_id,)
        ).fetchone()
    ):
        return None
    now = time.time()
    parked = append_events(
        conn,
        task_id,
        [*events, state_event(WAITING)],
        now,
        live_only=True,
        # Released: whichever coordinator wakes it next claims it.
        also_set="state = ?, wake_at = ?, input_prompt = ?, updated_at = ?, owner = NULL, lease_until = NULL",
        also_params=(WAITING, wake_at, prompt, now),
    )
    return [] if parked is None else parked  # a finished task stays as it is


def hold(conn: Connection, task_id: str, error: pb.TaskError, fence: str | None) -> list[EventRow] | None:
    """Stop a running task for an operator (WAITING, held): its code no longer matches its journal.
    Nothing of it runs until ResolveTask; the journal is left as it was."""
    now = time.time()
    prompt = f"held: {error.reason}: {error.message}"[:1000]
    data = {
        "reason": error.reason,
        "message": error.message,
        "details": json.loads(error.details_json or "null"),
    }
    return append_events(
        conn,
        task_id,
        [("task.held", json.dumps(data)), state_event(WAITING, held=True)],
        now,
        live_only=True,
        also_set="state = ?, held = 1, error = ?, wake_at = NULL, input_prompt = ?, updated_at = ?, "
        "owner = NULL, lease_until = NULL",
        also_params=(WAITING, error.SerializeToString(), prompt, now),
        fence=fence,
    )


def release(conn: Connection, task_id: str, version: str, keep_decisions: int | None) -> list[EventRow]:
    """A held task back to the queue, pinned to `version`; with `keep_decisions`, its later
    decisions (and the results of their actions) dropped first. Inputs those actions consumed are
    queued again, for the waits that take their places."""
    if keep_decisions is not None:
        conn.execute("DELETE FROM decisions WHERE task_id = ? AND seq > ?", (task_id, keep_decisions))
        conn.execute("DELETE FROM results WHERE task_id = ? AND decision_seq > ?", (task_id, keep_decisions))
        consumed = conn.execute(
            "SELECT seq, consumed_by FROM inputs WHERE task_id = ? AND consumed_by IS NOT NULL", (task_id,)
        ).fetchall()
        for seq, action_id in consumed:
            if action_place(action_id)[0] > keep_decisions:
                conn.execute(
                    "UPDATE inputs SET consumed_by = NULL WHERE task_id = ? AND seq = ?", (task_id, seq)
                )
        # A task that decided as each action settled goes on doing so, from its first decision.
        conn.execute(
            "UPDATE tasks SET decisions = ?, resets = resets + 1, "
            "open_from = CASE WHEN open_from > 0 AND ? > 0 THEN 1 ELSE 0 END WHERE id = ?",
            (keep_decisions, keep_decisions, task_id),
        )
    now = time.time()
    rows = append_events(
        conn,
        task_id,
        [state_event(QUEUED)],
        now,
        also_set="state = ?, held = 0, error = NULL, input_prompt = '', agent_version = ?, updated_at = ?",
        also_params=(QUEUED, version, now),
    )
    return rows or []


def action_prefix(conn: Connection, task_id: str) -> str:
    """What the ids of the task's new actions start with: the task id, and after an operator's
    reset the reset's number (TASK~rN), so that a new action never takes a dropped one's id."""
    (resets,) = conn.execute("SELECT resets FROM tasks WHERE id = ?", (task_id,)).fetchone()
    return f"{task_id}~r{resets}" if resets else task_id


def unfinished_children_of_dropped(conn: Connection, task_id: str, keep_decisions: int) -> list[str]:
    """Children still running of spawn actions in decisions after `keep_decisions`."""
    rows = conn.execute(
        "SELECT id, parent_action FROM tasks WHERE parent_id = ? AND state IN (1, 2, 3)", (task_id,)
    ).fetchall()
    return [child for child, action in rows if action and action_place(action)[0] > keep_decisions]


def due_wakeups(conn: Connection, now: float, limit: int) -> list[tuple[str, str, int]]:
    return conn.execute(
        "SELECT id, tenant, priority FROM tasks "
        "WHERE wake_at IS NOT NULL AND wake_at <= ? AND state = ? LIMIT ?",
        (now, WAITING, limit),
    ).fetchall()


def resumable(conn: Connection) -> list[tuple[str, str, int, int]]:
    """Tasks to put back in the queue at start: RUNNING first (they were mid-flight), then QUEUED."""
    return conn.execute(
        "SELECT id, tenant, priority, state FROM tasks WHERE state IN (?, ?) ORDER BY state DESC, id",
        (RUNNING, QUEUED),
    ).fetchall()


def counts_by_state(conn: Connection) -> dict[int, int]:
    return dict(conn.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall())


def started_actions(conn: Connection, task_id: str, action_ids: list[str]) -> set[str]:
    """Which of `action_ids` were announced as started: they may have run before a crash."""
    rows = conn.execute(
        "SELECT data FROM events WHERE task_id = ? AND kind = 'action.started'", (task_id,)
    ).fetchall()
    wanted = set(action_ids)
    # Parsed here rather than in SQL: SQLite and PostgreSQL spell JSON access differently.
    return {started for (data,) in rows if (started := json.loads(data).get("action_id")) in wanted}


def children_of(conn: Connection, parent_id: str, action_id: str) -> list[pb.Task]:
    rows = conn.execute(
        f"SELECT {TASK_COLUMNS} FROM {TASK_FROM} WHERE t.parent_id = ? AND t.parent_action = ? ORDER BY t.id",
        (parent_id, action_id),
    )
    return [row_to_task(r) for r in rows]


def owner_of(conn: Connection, task_id: str) -> str | None:
    """The coordinator that holds the task now (a shared store), if any."""
    row = conn.execute("SELECT owner FROM tasks WHERE id = ?", (task_id,)).fetchone()
    return row[0] if row else None


def parent_of(conn: Connection, task_id: str) -> str | None:
    row = conn.execute("SELECT parent_id FROM tasks WHERE id = ?", (task_id,)).fetchone()
    return row[0] if row else None


# ---------------------------------------------------------------------- leases (a shared store)


def claim(conn: Connection, task_id: str, owner: str, until: float, now: float) -> bool:
    """Take the task for `owner` until `until`: if nobody holds it, `owner` already does, or its
    holder's lease lapsed. False: another coordinator runs it."""
    row = conn.execute(
        "UPDATE tasks SET owner = ?, lease_until = ? WHERE id = ? "
        "AND (owner IS NULL OR owner = ? OR lease_until IS NULL OR lease_until < ?) RETURNING id",
        (owner, until, task_id, owner, now),
    ).fetchone()
    return row is not None


def renew(conn: Connection, owner: str, until: float, running: list[str]) -> tuple[list[str], list[str]]:
    """The heartbeat: extend every lease `owner` holds. Of the tasks it runs, returns those it lost
    (another coordinator holds them now) and those cancelled meanwhile (by another coordinator)."""
    conn.execute(
        f"UPDATE tasks SET lease_until = ? WHERE owner = ? AND state IN ({QUEUED}, {RUNNING})",
        (until, owner),
    )
    if not running:
        return [], []
    marks = ", ".join("?" * len(running))
    rows = conn.execute(
        f"SELECT id, owner, cancel_requested FROM tasks WHERE id IN ({marks}) "
        f"AND state IN ({QUEUED}, {RUNNING})",
        tuple(running),
    ).fetchall()
    lost = [tid for tid, holder, _ in rows if holder is not None and holder != owner]
    cancelled = [tid for tid, holder, wanted in rows if holder == owner and wanted]
    return lost, cancelled


def release_all(conn: Connection, owner: str) -> None:
    """A coordinator shutting down lets go of its unfinished tasks."""
    conn.execute(
        "UPDATE tasks SET owner = NULL, lease_until = NULL "
        f"WHERE owner = ? AND state IN ({QUEUED}, {RUNNING})",
        (owner,),
    )


def claim_lapsed(
    conn: Connection, owner: str, until: float, now: float, limit: int, skip_locked: str = ""
) -> list[tuple[str, str, int]]:
    """Take up to `limit` QUEUED or RUNNING tasks that nobody holds any more (their coordinator
    died or never held them): (id, tenant, priority) of each, now `owner`'s."""
    return conn.execute(
        "UPDATE tasks SET owner = ?, lease_until = ? WHERE id IN ("
        f"SELECT id FROM tasks WHERE state IN ({QUEUED}, {RUNNING}) "
        "AND (lease_until IS NULL OR lease_until < ?) ORDER BY priority DESC, id LIMIT ?"
        f"{skip_locked}) RETURNING id, tenant, priority",
        (owner, until, now, limit),
    ).fetchall()
