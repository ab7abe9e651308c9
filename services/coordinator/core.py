"""The coordinator's core: task admission, scheduling, and the durable loop of every task.

Guarantees (the rest of the mesh relies on these):
- A task acknowledged by `submit` is durable and reaches exactly one terminal state, across
  coordinator crashes: unfinished tasks resume from their last checkpoint (the last decision),
  and actions whose result is recorded are never dispatched again.
- Every change of a task is an event with a dense per-task seq, committed before it is published.
- Cancel records the intent durably first; then in-flight worker calls are cancelled (the workers
  kill what they run), children are cancelled, and the task ends CANCELLED.
- WAITING tasks hold nothing in memory: they live only in the store until an input, a timer or a
  child wakes them.
- The queue is bounded: `submit` raises ResourceExhausted rather than growing without limit.
This module imports neither grpc nor zmq; transport lives in servicer.py and workers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protos.agentmesh.v1 import agent_service_pb2 as api
from protos.agentmesh.v1 import bus_pb2, planner_pb2
from protos.agentmesh.v1 import common_pb2 as pb
from services.coordinator import access, records
from services.coordinator import timeline as timelines
from services.coordinator.auth import Caller
from services.coordinator.events import EventHub, row_to_event
from services.coordinator.pricing import BUDGET_EXCEEDED, PriceTable, add_cost, count_spend
from services.coordinator.repeat import why_not_repeatable
from services.coordinator.scheduler import Scheduler
from services.coordinator.store import EventRow, LeaseLost, Store
from services.coordinator.workers import Workers
from services.runtime.errors import (
    HISTORY_REQUIRED,
    NONDETERMINISM,
    AgentMeshError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from services.runtime.logs import current_task_id
from services.runtime.ratelimit import TokenBucket
from services.runtime.wire import STATE_NAMES, TERMINAL_STATES, action_place, cost_to_dict

log = logging.getLogger(__name__)

OK, FAILED_A, CANCELLED_A = pb.ACTION_STATUS_OK, pb.ACTION_STATUS_FAILED, pb.ACTION_STATUS_CANCELLED
TIMED_OUT_A, SKIPPED_A = pb.ACTION_STATUS_TIMED_OUT, pb.ACTION_STATUS_SKIPPED
ACTION_STATUS_NAMES = {v: k.removeprefix("ACTION_STATUS_") for k, v in pb.ActionStatus.items()}
DISPATCHED_KINDS = frozenset({"exec", "infer", "embed"})
WAIT_KINDS = frozenset({"await_input", "sleep", "spawn"})
# Reasons that no retry can fix.
NEVER_RETRY = frozenset(
    {
        "INVALID_ARGUMENT",
        "FAILED_PRECONDITION",
        "CANCELLED",
        "ISOLATION_UNAVAILABLE",
        "UNKNOWN_TOOL",
        "BUDGET_EXCEEDED",
    }
)
# Failures that say the worker went away, or is not ready yet (restarting, draining, loading its
# models), rather than that the action failed: the action waits for a worker within its timeout.
WORKER_LOST = frozenset(
    {"EXECUTOR_SHUTDOWN", "EXECUTOR_SESSION_LOST", "WORKER_PROTOCOL", "UNAVAILABLE", "MODELS_LOADING"}
)
# Of those, the ones where an exec action was (or may have been) running when its worker went away.
MID_RUN_LOSS = frozenset({"EXECUTOR_SHUTDOWN", "EXECUTOR_SESSION_LOST", "WORKER_PROTOCOL"})
# A worker that keeps breaking the protocol is not waited for as long as the timeout: a few tries.
MAX_PROTOCOL_ERRORS = 8
WORKER_WAIT_MAX_S = 2.0  # the longest pause between two tries of a worker that is not ready
# A shared store: how often a coordinator looks for tasks nobody holds (released or lapsed).
TAKEOVER_INTERVAL_S = 1.0
# How long a task's end waits for the results of its cancelled actions to be written.
LATE_WRITE_WAIT_S = 10.0
# A sleep this short is waited in memory rather than by parking the task.
INLINE_SLEEP_S = 1.0
# A cancelled task's own cleanup (DecideRequest.cancelling): how long and how many decisions.
CLEANUP_S = 30.0
MAX_CLEANUP_DECISIONS = 50
SWEEP_INTERVAL_S = 0.2


@dataclass(frozen=True)
class Limits:
    max_running: int = 256
    max_queued: int = 10_000
    max_inflight_exec: int = 64
    max_inflight_infer: int = 64
    tenant_submit_rate: float = 0.0
    tenant_submit_burst: float = 100.0
    default_action_timeout_s: float = 600.0
    decide_timeout_s: float = 30.0
    cancel_grace_s: float = 2.0
    max_input_bytes: int = 1 << 20
    # A shared store: how long a claim on a task holds without a heartbeat (renewed every third).
    lease_s: float = 10.0


class _Interrupt:
    """Why a running task's loop was cancelled."""

    CANCEL = "cancel"
    SHUTDOWN = "shutdown"
    FAIL = "fail"


@dataclass(slots=True)
class TaskRun:
    """A task while it runs. Dropped when it parks or finishes: WAITING tasks cost no memory."""

    task_id: str
    tenant: str
    priority: int = 0
    agent: str = ""
    # The agent version it is pinned to; empty until its first decision names one.
    agent_version: str = ""
    # What its actions' ids start with (TASK, or TASK~rN after an operator's reset).
    id_prefix: str = ""
    input_json: str = ""
    memo: str = ""
    parent_id: str = ""
    decisions: int = 0
    decision: pb.Decision | None = None
    decision_at: float = 0.0
    results: dict[str, pb.ActionResult] = field(default_factory=dict)
    cost: pb.Cost = field(default_factory=pb.Cost)
    budget: pb.Budget = field(default_factory=pb.Budget)
    deadline: float = 0.0
    task: asyncio.Task[None] | None = None
    inflight: set[asyncio.Task[Any]] = field(default_factory=set)
    # Results of cancelled actions still being written: the task's end waits for them (a result
    # written after the terminal state is dropped, and its cost with it).
    late_writes: set[asyncio.Future[Any]] = field(default_factory=set)
    # Exec actions of the loaded decision that were announced as started but have no result: they
    # may have run before a crash (filled by _load, emptied as they are dispatched again).
    maybe_started: set[str] = field(default_factory=set)
    interrupt: str = ""
    fail_error: pb.TaskError | None = None
    # Set once the loop is ending (stopping actions, writing the terminal state): later interrupts
    # must not cut that short, or the task would be left RUNNING with no terminal event.
    finishing: bool = False
    wake_pending: bool = False
    # Set by the loop's first step. Cancelling an asyncio task that has not started yet throws into
    # it before any of its try/except runs, so an interrupt before then is only recorded, and the
    # loop acts on it when it starts.
    started: bool = False
    # A task whose agent asks to decide as each action settles (Decision.on_each_settle): actions
    # of several decisions are open at once. `open`: those with no result yet; `opened_at`: the
    # time of each one's decision (sleeps and input timeouts count from it); `undelivered`: ids of
    # results the agent has not been handed, in the order they came; `running`: dispatches in
    # flight; `changed`: set when one ends or a wake comes in.
    eager: bool = False
    # The agent's latest answer asked to hear of each settle (else: once all open actions have).
    each: bool = False
    open: dict[str, pb.Action] = field(default_factory=dict)
    opened_at: dict[str, float] = field(default_factory=dict)
    undelivered: list[str] = field(default_factory=list)
    # Handed to decisions that came to nothing (Decision.nothing_new, not recorded): handed in
    # again, first, with the next decision, which is recorded as taken on them.
    applied: list[str] = field(default_factory=list)
    running: dict[str, asyncio.Task[Any]] = field(default_factory=dict)
    given_up: set[str] = field(default_factory=set)  # open actions the agent gave up, being stopped
    # Cancels (SEQ.INDEX) recorded with decisions a crash may have cut off before they were done.
    pending_cancels: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    dispatch_errors: list[BaseException] = field(default_factory=list)


class TaskManager:
    def __init__(
        self,
        store: Store,
        workers: Workers,
        publish: Callable[[str, bytes], None],
        limits: Limits,
        prices: PriceTable,
        owner: str = "",
    ) -> None:
        self.store = store
        # Who this coordinator is in the store's leases; `shared`: other coordinators use the store
        # too, so a task runs only where it is claimed, and lapsed claims are taken over.
        self.owner = owner or f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"
        self.shared = store.backend.shared
        # The progress writes of a run (results, checkpoints) land only while this coordinator
        # holds the task: a stalled one that lost its lease cannot write beside the new holder.
        self._fence = self.owner if self.shared else None
        self.workers = workers
        self._publish = publish
        self.limits = limits
        self.prices = prices
        self.scheduler = Scheduler()
        self.hub = EventHub(self._read_events)
        self._running: dict[str, TaskRun] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._slots = {
            "exec": asyncio.Semaphore(limits.max_inflight_exec),
            "infer": asyncio.Semaphore(limits.max_inflight_infer),
            "embed": asyncio.Semaphore(limits.max_inflight_infer),
        }
        # share_identical actions running now, by _share_key: later identical ones join them.
        self._shared: dict[tuple[str, bytes], asyncio.Future[pb.ActionResult]] = {}
        self._accepting = True
        self._background: set[asyncio.Task[Any]] = set()
        self.finished_total: dict[str, int] = {}

    # ------------------------------------------------------------------ plumbing

    def _emit(self, rows: list[EventRow] | None) -> None:
        for row in rows or ():
            event = row_to_event(row)
            self._publish(f"task.{row.task_id}", event.SerializeToString())
            self.hub.deliver(event)

    async def _tx(self, fn: Callable[[Any], tuple[Any, list[EventRow] | None]]) -> Any:
        """Run `fn(conn) -> (value, events)` in the store; publish the events after the commit."""
        # The events go out when the transaction commits, even if this caller is interrupted while
        # waiting for it (a cancel, a deadline): the store calls `_emit_committed` regardless.
        value, _ = await self.store.run(fn, on_commit=self._emit_committed)
        return value

    def _tx_nowait(self, fn: Callable[[Any], tuple[Any, list[EventRow] | None]]) -> None:
        """As `_tx`, for writes nobody waits on (output chunks): order is kept by the store queue."""
        self.store.run(fn, on_commit=self._emit_committed).add_done_callback(_log_failed_write)

    def _emit_committed(self, value: tuple[Any, list[EventRow] | None]) -> None:
        self._emit(value[1])

    def _spawn_bg(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background step failed", exc_info=task.exception())

    async def _read_events(
        self, task_id: str, after: int, limit: int
    ) -> tuple[list[EventRow], tuple[int, int] | None]:
        return await self.store.run(
            lambda c: (records.events_after(c, task_id, after, limit), records.task_progress(c, task_id))
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> int:
        """Put every unfinished task back to work. Returns how many were resumed. On a shared store,
        only those nobody holds: the rest belong to live coordinators, or are taken over when their
        holder's lease lapses (lease_forever)."""
        if self.shared:
            return await self._take_over(self.limits.max_queued)
        rows = await self.store.run(records.resumable)
        for task_id, tenant, priority, _state in rows:
            self.scheduler.push(task_id, tenant, priority)
        self._pump()
        return len(rows)

    def _lease_until(self) -> float:
        return time.time() + self.limits.lease_s

    def _lease(self) -> tuple[str, float] | None:
        """What a task this coordinator creates is held by: on a shared store, this coordinator."""
        return (self.owner, self._lease_until()) if self.shared else None

    async def _take_over(self, limit: int) -> int:
        """Claim up to `limit` unfinished tasks whose coordinator is gone, and queue them here."""
        if limit <= 0:
            return 0
        skip = self.store.backend.skip_locked
        rows = await self.store.run(
            lambda c: records.claim_lapsed(c, self.owner, self._lease_until(), time.time(), limit, skip)
        )
        for task_id, tenant, priority in rows:
            if task_id not in self._running:
                self.scheduler.push(task_id, tenant, priority)
        self._pump()
        return len(rows)

    async def lease_forever(self) -> None:
        """On a shared store: renew this coordinator's leases; stop runs whose lease another
        coordinator took (this one stalled past it) or that another coordinator cancelled; take
        over the tasks of coordinators that died. Never stopped by an error: it logs and goes on."""
        renew_every = self.limits.lease_s / 3
        renewed_at = time.monotonic()
        while True:
            # Released tasks (a coordinator that stopped) are looked for every second at most;
            # leases are renewed every third of their length.
            await asyncio.sleep(min(TAKEOVER_INTERVAL_S, renew_every))
            try:
                if time.monotonic() - renewed_at >= renew_every:
                    renewed_at = time.monotonic()
                    await self._renew()
                await self._take_over(self.limits.max_queued - self.scheduler.admitted_waiting)
            except Exception:  # noqa: BLE001
                log.exception("lease heartbeat failed")

    async def _renew(self) -> None:
        running = list(self._running)
        lost, cancelled = await self.store.run(
            lambda c: records.renew(c, self.owner, self._lease_until(), running)
        )
        for task_id in lost:
            run = self._running.get(task_id)
            if run is not None:
                log.warning("task %s is now another coordinator's: stopping it here", task_id)
                self._interrupt(run, _Interrupt.SHUTDOWN)
        for task_id in cancelled:
            self._cancel_notice(task_id)

    def _cancel_notice(self, task_id: str) -> None:
        """Another coordinator cancelled a task that runs here (the bus, or the heartbeat's look)."""
        run = self._running.get(task_id)
        if run is not None and not run.finishing:
            self._interrupt(run, _Interrupt.CANCEL)

    async def follow_cancels(self, notices: Any) -> None:
        """Cancels published by other coordinators (the bus's `cancel.<id>`), for tasks running here."""
        while True:
            try:
                _, payload = await notices.recv()
                self._cancel_notice(bus_pb2.CancelNotice.FromString(payload).task_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bad message must not stop cancellation
                log.exception("bad cancel notice")

    async def sweep_forever(self) -> None:
        """Wake parked tasks whose timer is due. Never stopped by an error: it logs and goes on."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                due = await self.store.run(lambda c: records.due_wakeups(c, time.time(), 1000))
                for task_id, tenant, priority in due:
                    self._wake_known(task_id, tenant, priority)
            except Exception:  # noqa: BLE001
                log.exception("wake-up sweep failed")

    async def drain(self, grace_s: float) -> None:
        """Stop starting tasks; hand running ones back (they stay RUNNING in the store and resume on
        the next start); their in-flight actions are cancelled so no worker runs orphaned work."""
        self._accepting = False
        runs = list(self._running.values())
        for run in runs:
            self._interrupt(run, _Interrupt.SHUTDOWN)
        tasks = [r.task for r in runs if r.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        if self.shared:  # the other coordinators take our tasks at once, not when the leases lapse
            with contextlib.suppress(Exception):
                await self.store.run(lambda c: records.release_all(c, self.owner))
        for task in list(self._background):
            task.cancel()

    # ------------------------------------------------------------------ public operations

    async def submit(
        self,
        tenant: str,
        agent: str,
        input_json: str,
        *,
        priority: int = 0,
        budget: pb.Budget | None = None,
        deadline_s: float = 0.0,
        idempotency_key: str = "",
        labels: dict[str, str] | None = None,
    ) -> pb.Task:
        if not self._accepting:
            raise Unavailable("coordinator is shutting down", reason="DRAINING", retry_after_s=1.0)
        budget = budget or pb.Budget()
        labels = labels or {}
        _validate_submit(
            agent,
            input_json,
            priority,
            budget,
            deadline_s,
            idempotency_key,
            labels,
            self.limits.max_input_bytes,
        )
        wait = self._bucket(tenant).take(time.monotonic())
        if wait > 0:
            raise ResourceExhausted(
                f"tenant {tenant!r} is over its submit rate",
                reason="RATE_LIMITED",
                retry_after_s=round(wait, 3),
            )
        canonical_input = json.dumps(json.loads(input_json), sort_keys=True, separators=(",", ":"))
        request_hash = hashlib.sha256(
            json.dumps(
                [
                    agent,
                    canonical_input,
                    priority,
                    budget.usd,
                    budget.tokens,
                    deadline_s,
                    sorted(labels.items()),
                ]
            ).encode()
        ).hexdigest()
        if self.scheduler.admitted_waiting >= self.limits.max_queued:
            if idempotency_key:  # a repeat of an accepted submit is answered even when full
                existing = await self._find_idempotent(tenant, idempotency_key, request_hash)
                if existing is not None:
                    return existing
            raise ResourceExhausted(
                f"queue is full ({self.limits.max_queued} tasks waiting to start)",
                reason="QUEUE_FULL",
                retry_after_s=self._retry_hint(),
            )
        version = await self.workers.validate(agent, input_json, timeout=self.limits.decide_timeout_s)
        now = time.time()
        task = pb.Task(
            id=records.new_task_id(),
            tenant=tenant,
            agent=agent,
            agent_version=version,
            input_json=input_json,
            priority=priority,
            budget=budget,
            deadline=now + deadline_s if deadline_s else 0.0,
            labels=labels,
            idempotency_key=idempotency_key,
            created_at=now,
            updated_at=now,
        )

        def op(conn: Any) -> tuple[tuple[pb.Task, bool], list[EventRow]]:
            stored, created, events = records.insert_task(conn, task, request_hash, lease=self._lease())
            return (stored, created), events

        stored, created = await self._tx(op)
        if created:
            self.scheduler.push(stored.id, tenant, priority, admitted=True)
            self._pump()
        return stored

    async def _find_idempotent(self, tenant: str, key: str, request_hash: str) -> pb.Task | None:
        probe = pb.Task(tenant=tenant, idempotency_key=key)

        def op(conn: Any) -> pb.Task | None:
            row = conn.execute(
                "SELECT id, request_hash FROM tasks WHERE tenant = ? AND idem_key = ?", (tenant, key)
            ).fetchone()
            if row is None:
                return None
            stored, _, _ = records.insert_task(conn, probe, request_hash)  # raises on a different body
            return stored

        return await self.store.run(op)

    def _retry_hint(self) -> float:
        # Roughly the time for the running set to turn over once; at least a second.
        return max(1.0, min(30.0, len(self.scheduler) / max(1, self.limits.max_running)))

    def _bucket(self, tenant: str) -> TokenBucket:
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = TokenBucket(
                self.limits.tenant_submit_rate, self.limits.tenant_submit_burst, time.monotonic()
            )
            self._buckets[tenant] = bucket
        return bucket

    async def get(self, tenant: str, task_id: str) -> pb.Task:
        return await self.store.run(lambda c: records.get_task(c, task_id, tenant))

    async def timeline(self, tenant: str, task_id: str) -> api.TaskTimeline:
        """Where the task's time went, read from its events (timeline.py)."""

        def op(conn: Any) -> api.TaskTimeline:
            task = records.get_task(conn, task_id, tenant)
            return timelines.build(task, *timelines.read(conn, task_id))

        return await self.store.run(op)

    async def journal(self, tenant: str, task_id: str) -> api.TaskJournal:
        """The task with every decision and its actions' results, as a replay reads them."""

        def op(conn: Any) -> api.TaskJournal:
            task = records.get_task(conn, task_id, tenant)
            journal = api.TaskJournal(task=task)
            for seq, decision, results in records.load_history(conn, task_id, task.decisions):
                record = journal.decisions.add(seq=seq, decision=decision)
                record.results.extend(results[a.id] for a in decision.actions if a.id in results)
            return journal

        return await self.store.run(op)

    async def list(self, tenant: str, state: int, limit: int, cursor: str) -> tuple[list[pb.Task], str]:
        if state and state not in STATE_NAMES:
            raise InvalidArgument(f"unknown state {state}")
        limit = 50 if limit <= 0 else min(limit, 1000)
        return await self.store.run(lambda c: records.list_tasks(c, tenant, state, limit, cursor))

    async def list_agents(self) -> list[Any]:
        return await self.workers.list_agents()

    async def list_models(self) -> list[Any]:
        return await self.workers.list_models()

    async def cancel(
        self, tenant: str | None, task_id: str, reason: str = "", caller: Caller | None = None
    ) -> pb.Task:
        """Idempotent. FailedPrecondition if the task already finished otherwise than cancelled.
        `caller`: the key that asked, for the audit log (None: the mesh itself, e.g. a parent's end).

        The reply waits for the cancel intent to be durable, so an acknowledged cancel survives a
        crash. The kill does not wait for it: a task running here has its actions stopped while the
        intent's fsync is under way. Killing before the intent is durable is safe because nothing is
        acknowledged yet: if the coordinator dies in between, the client has no answer and retries,
        and the task resumes like any task whose action died with its worker (the action runs again
        if it is safe to repeat, else it is marked ambiguous).
        """
        reason = reason or "cancelled by request"

        def op(conn: Any) -> tuple[tuple[pb.Task, bool, list[str], str | None, bool], list[EventRow]]:
            task, new, events = records.request_cancel(conn, task_id, tenant, reason)
            if caller is not None:
                access.audit(conn, caller, "task.cancel", task_id, {"reason": reason, "first": new})
            # Always asked, not only on the first cancel: a retried cancel finishes an interrupted cascade.
            children = records.unfinished_children(conn, task_id)
            owner = records.owner_of(conn, task_id) if self.shared else None
            cleans_up = records.wants_cleanup(conn, task_id, task.decisions)
            return (task, new, children, owner, cleans_up), events

        run = self._running.get(task_id)
        # Only a run this caller may cancel and that is not already ending on its own; anything else
        # (another tenant's task, unknown id, a task finishing) is decided by the durable write.
        early = run is not None and not run.finishing and tenant in (None, run.tenant)
        # Queued before the interrupted run writes its end, so that end reads the intent and reason.
        intent = self.store.run(op, on_commit=self._emit_committed)
        if early:
            self._stop_running(task_id, run, reason)  # type: ignore[arg-type]
        (task, new, children, owner, cleans_up), _ = await intent
        if task.state in TERMINAL_STATES:
            return task
        run = self._running.get(task_id)
        if not early and run is not None:
            self._stop_running(task_id, run, reason)
        elif not early and self.shared and task.state == records.RUNNING and owner not in (None, self.owner):
            # It runs on another coordinator: that one ends it (the bus tells it now, its heartbeat
            # reads the durable intent otherwise; if it died, whoever takes the task over ends it).
            self._publish_cancel(task_id, reason)
        elif not early and cleans_up:
            # Parked or queued, with an agent that cleans up on cancel: it runs once more to do so
            # (its loop reads the durable intent), and then ends CANCELLED.
            self._publish_cancel(task_id, reason)
            if task.state == records.WAITING:
                self._wake_known(task_id, task.tenant, task.priority)
        elif not early:
            # QUEUED or WAITING: nothing is in flight, so it ends now. If it starts running meanwhile,
            # its loop reads the durable intent and ends CANCELLED itself; finishing twice is a no-op.
            self._publish_cancel(task_id, reason)
            self.scheduler.discard(task_id)
            await self._finish(task_id, records.CANCELLED, parent_id=None)
        await self._cancel_children(task_id, children, f"parent {task_id} cancelled")
        return await self.store.run(lambda c: records.get_task(c, task_id))

    def _publish_cancel(self, task_id: str, reason: str) -> None:
        self._publish(
            f"cancel.{task_id}", bus_pb2.CancelNotice(task_id=task_id, reason=reason).SerializeToString()
        )

    def _stop_running(self, task_id: str, run: TaskRun, reason: str) -> None:
        """Tell the workers (bus) and stop our own in-flight calls for a task running here."""
        self._publish_cancel(task_id, reason)
        self._interrupt(run, _Interrupt.CANCEL)

    async def _cancel_spawned(self, parent_id: str, spawn_ids: list[str], reason: str) -> None:
        """Cancel the unfinished children of these spawn actions."""

        def op(conn: Any) -> list[str]:
            return [
                c.id
                for spawn_id in spawn_ids
                for c in records.children_of(conn, parent_id, spawn_id)
                if c.state not in TERMINAL_STATES
            ]

        await self._cancel_children(parent_id, await self.store.run(op), reason)

    async def _cancel_children(self, parent_id: str, children: list[str], reason: str) -> None:
        """All at once: each child's kill need not wait for its siblings' durable writes."""

        async def one(child: str) -> None:
            with contextlib.suppress(AgentMeshError):
                await self.cancel(None, child, reason)

        await asyncio.gather(*(one(child) for child in children))

    async def send_input(
        self, tenant: str, task_id: str, data_json: str, caller: Caller | None = None
    ) -> tuple[bool, pb.Task]:
        """Queue an input for the task's current or next `await_input`. Refused for finished tasks."""
        if len(data_json.encode()) > self.limits.max_input_bytes:
            raise InvalidArgument(
                f"input is larger than {self.limits.max_input_bytes} bytes", reason="INPUT_TOO_LARGE"
            )
        _parse_json(data_json, "data")

        def op(conn: Any) -> tuple[pb.Task, list[EventRow]]:
            added = records.add_input(conn, task_id, tenant, data_json)
            if caller is not None:
                access.audit(conn, caller, "task.input", task_id, {"bytes": len(data_json.encode())})
            return added

        task = await self._tx(op)
        delivered = task.state == records.WAITING and bool(task.input_prompt)
        self._wake_known(task.id, task.tenant, task.priority)
        return delivered, task

    async def watch(self, tenant: str, task_id: str, after_seq: int):  # type: ignore[no-untyped-def]
        await self.get(tenant, task_id)  # NotFound for a missing task or another tenant's
        async for event in self.hub.watch(task_id, max(0, after_seq), TERMINAL_STATES):
            yield event

    # ------------------------------------------------------------------ scheduling

    def _wake_known(self, task_id: str, tenant: str, priority: int) -> None:
        run = self._running.get(task_id)
        if run is not None:
            run.wake_pending = True  # it re-checks before parking, or re-queues itself after
            run.changed.set()
            return
        self.scheduler.push(task_id, tenant, priority)
        self._pump()

    async def _wake(self, task_id: str) -> None:
        run = self._running.get(task_id)
        if run is not None:  # running now: it looks again before it parks, or re-queues itself
            run.wake_pending = True
            run.changed.set()
            return
        row = await self.store.run(
            lambda c: c.execute(
                "SELECT tenant, priority, state FROM tasks WHERE id = ?", (task_id,)
            ).fetchone()
        )
        if row is not None and row[2] == records.WAITING:
            self._wake_known(task_id, row[0], row[1])

    def _pump(self) -> None:
        while self._accepting and len(self._running) < self.limits.max_running:
            picked = self.scheduler.pop()
            if picked is None:
                return
            task_id, tenant = picked
            run = TaskRun(task_id=task_id, tenant=tenant)
            self._running[task_id] = run
            self.scheduler.started(tenant)
            run.task = asyncio.get_running_loop().create_task(self._drive(run), name=f"task-{task_id}")

    def _interrupt(self, run: TaskRun, why: str, error: pb.TaskError | None = None) -> None:
        if run.finishing:
            return
        if run.interrupt:
            if why == _Interrupt.CANCEL and run.interrupt == _Interrupt.FAIL:
                return
            if run.interrupt == _Interrupt.CANCEL:
                return
        run.interrupt = why
        run.fail_error = error
        if run.task is not None and run.started:
            run.task.cancel()

    # ------------------------------------------------------------------ the task loop

    async def _drive(self, run: TaskRun) -> None:
        token = current_task_id.set(run.task_id)
        requeue = False
        try:
            run.started = True
            if run.interrupt:  # interrupted before it started (see TaskRun.started)
                raise asyncio.CancelledError
            requeue = await self._loop(run)
        except asyncio.CancelledError:
            run.finishing = True
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            await self._stop_inflight(run)
            if run.interrupt == _Interrupt.CANCEL:
                await self._clean_up(run)
                await self._finish(run.task_id, records.CANCELLED, parent_id=run.parent_id, fence=self._fence)
            elif run.interrupt == _Interrupt.FAIL:
                await self._finish(
                    run.task_id,
                    records.FAILED,
                    error=run.fail_error,
                    parent_id=run.parent_id,
                    fence=self._fence,
                )
            elif run.interrupt != _Interrupt.SHUTDOWN:
                raise
        except LeaseLost as exc:
            # Another coordinator holds the task now (this one stalled past its lease): stop here,
            # writing nothing more for it; the holder carries on from the last checkpoint.
            log.warning("stopping task %s here: %s", run.task_id, exc)
            run.finishing, run.interrupt = True, _Interrupt.SHUTDOWN
            await self._stop_inflight(run)
        except AgentMeshError as exc:
            run.finishing = True
            await self._stop_inflight(run)
            await self._finish(
                run.task_id,
                records.FAILED,
                parent_id=run.parent_id,
                fence=self._fence,
                error=pb.TaskError(reason=exc.reason, message=exc.message),
            )
        except Exception as exc:  # noqa: BLE001 - one task's bug must not take the coordinator down
            log.exception("task loop failed")
            run.finishing = True
            await self._stop_inflight(run)
            await self._finish(
                run.task_id,
                records.FAILED,
                parent_id=run.parent_id,
                fence=self._fence,
                error=pb.TaskError(reason="INTERNAL", message=f"coordinator error: {exc!r}"),
            )
        finally:
            current_task_id.reset(token)
            self._running.pop(run.task_id, None)
            self.scheduler.finished(run.tenant)
            if (requeue or run.wake_pending) and self._accepting and not run.interrupt:
                self._spawn_bg(self._wake(run.task_id))
            self._pump()

    async def _load(self, run: TaskRun) -> bool:
        """Read the task into `run`; False if there is nothing to run."""

        def op(conn: Any) -> tuple[Any, list[EventRow] | None]:
            now = time.time()
            until = now + self.limits.lease_s
            if self.shared and not records.claim(conn, run.task_id, self.owner, until, now):
                return None, None  # another coordinator runs it
            task = records.get_task(conn, run.task_id)
            if task.state in TERMINAL_STATES:
                return None, None
            if task.held:  # its code no longer matches its journal: nothing runs until ResolveTask
                return ("cancel" if task.cancel_requested else None), None
            if task.cancel_requested and not records.wants_cleanup(conn, run.task_id, task.decisions):
                return "cancel", None
            events = None
            if task.state != records.RUNNING:
                events = records.set_state(conn, run.task_id, records.RUNNING)
            decision = records.load_decision(conn, run.task_id, task.decisions) if task.decisions else None
            memo = decision[0].memo_json if decision is not None else ""
            parent = records.parent_of(conn, run.task_id) or ""
            prefix = records.action_prefix(conn, run.task_id)
            started: set[str] = set()
            opened = records.load_open(conn, run.task_id) if decision is not None else None
            if opened is not None:
                unsettled = [a.id for a, _ in opened[0] if a.WhichOneof("kind") == "exec"]
            elif decision is not None:
                unsettled = [
                    a.id
                    for a in decision[0].actions
                    if a.WhichOneof("kind") == "exec" and a.id not in decision[2]
                ]
            if decision is not None and unsettled:  # only after a crash (or with actions open)
                started = records.started_actions(conn, run.task_id, unsettled)
            return (task, memo, decision, parent, started, opened, prefix), events

        loaded = await self._tx(op)
        if loaded is None:
            return False
        if loaded == "cancel":
            run.finishing = True  # a later interrupt must not cut this write short
            await self._finish(run.task_id, records.CANCELLED, parent_id=None, fence=self._fence)
            return False
        task, memo, decision, parent, run.maybe_started, opened, run.id_prefix = loaded
        run.agent, run.input_json, run.memo, run.priority = task.agent, task.input_json, memo, task.priority
        run.agent_version = task.agent_version
        run.decisions, run.cost, run.budget, run.deadline = (
            task.decisions,
            task.cost,
            task.budget,
            task.deadline,
        )
        run.parent_id = parent
        over = _over_budget(run.cost, run.budget)
        if over:  # it passed its budget before a restart: nothing more of it runs
            raise AgentMeshError(over, reason="BUDGET_EXCEEDED")
        if decision is not None:
            run.decision, run.decision_at, run.results = decision
        if opened is not None:
            open_actions, undelivered, run.pending_cancels = opened
            run.eager, run.each = True, decision[0].on_each_settle
            run.open = {a.id: a for a, _ in open_actions}
            run.opened_at = {a.id: at for a, at in open_actions}
            run.results = {r.action_id: r for r in undelivered}
            run.undelivered = list(run.results)
        if task.cancel_requested:  # cancelled while it was parked or queued: its agent cleans up now
            run.interrupt = _Interrupt.CANCEL
        return True

    async def _loop(self, run: TaskRun) -> bool:
        """Drive the task until it parks (returns whether to re-queue at once) or finishes."""
        if not await self._load(run):
            return False
        if run.interrupt:
            raise asyncio.CancelledError
        while True:
            self._check_deadline(run)
            if run.eager:
                turned = await self._run_open(run)
                if turned is not None:
                    return turned
                continue
            decision = run.decision
            if decision is not None and _group_settled(decision, run.results):
                await self._skip_pending(run)
            pending = [a for a in decision.actions if a.id not in run.results] if decision is not None else []
            if not pending:
                if await self._decide_next(run):
                    return False
                continue
            parked = await self._run_actions(run, pending)
            if parked is not None:
                return parked

    def _check_deadline(self, run: TaskRun) -> None:
        if run.deadline and time.time() >= run.deadline:
            raise DeadlineExceeded("the task passed its deadline", reason="DEADLINE_EXCEEDED")

    async def _skip_pending(self, run: TaskRun) -> None:
        assert run.decision is not None
        why = "a fail-fast sibling failed" if run.decision.fail_fast else "a sibling succeeded first"
        for action in run.decision.actions:
            if action.id not in run.results:
                error = pb.TaskError(reason="SKIPPED", message=why)
                await self._settle(run, action, SKIPPED_A, error=error)

    async def _decide_next(self, run: TaskRun, cancelling: bool = False) -> bool:
        """Ask the planner for the next decision and checkpoint it. True when the task finished
        (`cancelling`: when the agent's cleanup has ended; the task's end is the caller's to write)."""
        seq = run.decisions + 1
        # What this decision is taken on: whatever settled since the last one (an eager task), or
        # the whole previous decision's results.
        delivering = [*run.applied, *run.undelivered] if run.eager else []
        if run.eager:
            results = [run.results[i] for i in delivering]
        elif run.decision is not None:
            results = [run.results[a.id] for a in run.decision.actions if a.id in run.results]
        else:
            results = []
        request = planner_pb2.DecideRequest(
            task_id=run.task_id,
            agent=run.agent,
            input_json=run.input_json,
            memo_json=run.memo,
            results=results,
            decision_seq=seq,
            tools=await self.workers.tools.listed(),
            now=time.time(),
            cancelling=cancelling,
            # A child spawned by its parent is pinned when it first runs: to the newest version.
            agent_version=run.agent_version or (await self.workers.newest(run.agent) if seq == 1 else ""),
        )
        asked_at = time.time()
        decision = await self._call_planner(run, request)
        decided_ms = round((time.time() - asked_at) * 1000, 3)
        run.agent_version = request.agent_version  # written with the first checkpoint
        if _diverged(decision) and not cancelling:
            await self._hold(run, decision.final.error)
            return True
        decision.answered.extend(delivering)
        for index, action in enumerate(decision.actions):
            action.id = f"{run.id_prefix or run.task_id}.{seq}.{index}"
            if action.WhichOneof("kind") is None:
                raise InvalidArgument(
                    f"planner returned action {index} with no kind", reason="INVALID_DECISION"
                )
        summary = {
            "seq": seq,
            "actions": [{"id": a.id, "key": a.key, "kind": a.WhichOneof("kind")} for a in decision.actions],
            "final": STATE_NAMES[decision.final.state] if decision.HasField("final") else None,
            # How long the planner took (retries and a replay included): the timeline's decision span.
            "decide_ms": decided_ms,
        }
        # An SDK agent's ctx.emit: recorded with the checkpoint, under a prefix no system event has.
        emitted = [("agent." + e.kind, e.data_json or "null") for e in decision.events]
        if cancelling and decision.HasField("final"):
            decision.ClearField("final")  # the task ends CANCELLED, whatever the agent answered
            decision.ClearField("actions")
            await self._tx(lambda c: self._checkpoint(c, run, seq, decision, summary, emitted))
            return True
        if decision.HasField("final"):
            if run.running:  # an eager agent may end with actions still running: stopped, and paid for
                run.finishing = True
                await self._stop_inflight(run)
            spawns = [a.id for a in run.open.values() if a.WhichOneof("kind") == "spawn"]
            if spawns:  # children nobody waits for any more
                self._spawn_bg(self._cancel_spawned(run.task_id, spawns, "its parent ended"))
            final = decision.final
            state = records.SUCCEEDED if final.state == records.SUCCEEDED else records.FAILED
            error = final.error if final.error.reason else None
            if state == records.FAILED and error is None:
                error = pb.TaskError(reason="AGENT_FAILED", message="the agent reported failure")

            def final_op(conn: Any) -> tuple[None, list[EventRow]]:
                _, events = self._checkpoint(conn, run, seq, decision, summary, emitted)
                return None, events + records.finish(
                    conn, run.task_id, state, result_json=final.result_json, error=error
                )

            run.finishing = True  # from here an interrupt has nothing left to stop
            await self._tx(final_op)
            self._count_finish(state)
            if run.parent_id:
                self._spawn_bg(self._wake(run.parent_id))
            return True
        asks = emitted + [
            ("input.requested", json.dumps({"action_id": a.id, "key": a.key, "prompt": a.await_input.prompt}))
            for a in decision.actions
            if a.WhichOneof("kind") == "await_input"
        ]

        if not (run.eager or decision.on_each_settle):
            run.decision_at = await self._tx(lambda c: self._checkpoint(c, run, seq, decision, summary, asks))
            run.decision, run.decisions, run.memo, run.results = decision, seq, decision.memo_json, {}
            return False
        # Eager from here on: the new actions join those still open.
        if not run.eager:
            run.eager, run.results = True, {}
        delivered = set(delivering)
        run.each = decision.on_each_settle
        if decision.nothing_new and not (
            decision.actions or decision.events or decision.cancel_actions or cancelling
        ):
            run.applied = delivering  # not recorded: the next decision is taken on them too
            run.undelivered = [i for i in run.undelivered if i not in delivered]
            return False
        still = [i for i in run.undelivered if i not in delivered]
        open_from = min([seq, *(action_place(i)[0] for i in [*run.open, *still])])
        at = await self._tx(lambda c: self._checkpoint(c, run, seq, decision, summary, asks, open_from))
        run.decision, run.decision_at, run.decisions, run.memo = decision, at, seq, decision.memo_json
        run.undelivered = [i for i in run.undelivered if i not in delivered]
        run.applied = []
        for action_id in delivered:
            run.results.pop(action_id, None)
        for action in decision.actions:
            run.open[action.id] = action
            run.opened_at[action.id] = at
        for ref in decision.cancel_actions:  # SEQ.INDEX
            await self._give_up(run, ref)
        return False

    async def _hold(self, run: TaskRun, error: pb.TaskError) -> None:
        """The agent's code no longer matches the task's journal: stop the task for an operator
        (ResolveTask), journal untouched. What runs of it is stopped as on a shutdown: nothing
        recorded, so it runs again (or is asked after, if it may not) when the task goes on."""
        run.finishing, run.interrupt = True, _Interrupt.SHUTDOWN
        await self._stop_inflight(run)
        await self._tx(lambda c: (None, records.hold(c, run.task_id, error, self._fence)))
        log.warning("task %s held: %s", run.task_id, error.message)
        if (await self.get(run.tenant, run.task_id)).cancel_requested:  # it came while holding
            await self._finish(run.task_id, records.CANCELLED, parent_id=run.parent_id)

    async def resolve(
        self,
        tenant: str,
        task_id: str,
        action: str,
        version: str = "",
        to_decision: int = 0,
        caller: Caller | None = None,
    ) -> pb.Task:
        """An operator's answer for a held task: resume (on `version`, default its own), reset (keep
        its first `to_decision` decisions; the later ones' actions run again as the code asks) or
        fail (FAILED with the error that held it)."""
        if action not in ("resume", "reset", "fail"):
            raise InvalidArgument(
                f"action must be resume, reset or fail, not {action!r}",
                field_violations=[("action", "resume, reset or fail")],
            )

        def op(conn: Any) -> tuple[tuple[pb.Task, list[str]], list[EventRow]]:
            task = records.get_task(conn, task_id, tenant)
            if not task.held:
                raise FailedPrecondition(
                    f"task {task_id} is not held (it is {STATE_NAMES[task.state]})", reason="NOT_HELD"
                )
            if caller is not None:
                detail = {"action": action, "version": version, "to_decision": to_decision}
                access.audit(conn, caller, "task.resolve", task_id, detail)
            if action == "fail":
                return (task, []), []  # ended below, as every task ends
            else:
                keep = None
                if action == "reset":
                    if not 0 <= to_decision <= task.decisions:
                        raise InvalidArgument(
                            f"to_decision must be 0 to {task.decisions}",
                            field_violations=[("to_decision", f"0 to {task.decisions}")],
                        )
                    keep = to_decision
                dropped = [] if keep is None else records.unfinished_children_of_dropped(conn, task_id, keep)
                events = records.release(conn, task_id, version or task.agent_version, keep)
                return (records.get_task(conn, task_id), dropped), events
            return (records.get_task(conn, task_id), []), events

        task, dropped = await self._tx(op)
        if dropped:  # spawned by decisions the reset dropped: nothing waits for them any more
            self._spawn_bg(self._cancel_children(task_id, dropped, "its parent was reset"))
        if action == "fail":
            await self._finish(task_id, records.FAILED, parent_id=None, error=task.error)
            return await self.get(tenant, task_id)
        else:
            self.scheduler.push(task.id, task.tenant, task.priority)
            self._pump()
        return task

    def _checkpoint(
        self,
        conn: Any,
        run: TaskRun,
        seq: int,
        decision: pb.Decision,
        summary: dict[str, Any],
        extra: list[tuple[str, str]],
        open_from: int = 0,
    ) -> tuple[float, list[EventRow]]:
        pin = run.agent_version if seq == 1 else ""
        created_at, events = records.save_decision(
            conn, run.task_id, seq, decision, summary, self._fence, pin_version=pin, open_from=open_from
        )
        if extra:
            events = events + records.append_events(conn, run.task_id, extra, created_at)
        return created_at, events

    async def _clean_up(self, run: TaskRun) -> None:
        """A cancelled task whose agent handles cancels (an SDK agent: `Cancelled` is raised inside
        it) gets to run its cleanup: it is asked for decisions marked `cancelling`, whose exec,
        infer and embed actions run and are paid for, until it ends, for up to CLEANUP_S. Waits
        (input, sleep, spawn) are not waited for: they settle CANCELLED at once. After a crash the
        cleanup goes on from its last decision (what the crash cut off settles CANCELLED)."""
        if run.decision is None or not run.decision.handles_cancel:
            return
        try:
            async with asyncio.timeout(CLEANUP_S):
                for _ in range(MAX_CLEANUP_DECISIONS):
                    unsettled = list(run.open.values()) if run.eager else run.decision.actions
                    for action in unsettled:
                        if action.id not in run.results:
                            error = pb.TaskError(reason="CANCELLED", message="the task was cancelled")
                            await self._settle(run, action, CANCELLED_A, error=error)
                    if await self._decide_next(run, cancelling=True):
                        return
                    dispatched = [a for a in run.decision.actions if a.WhichOneof("kind") in DISPATCHED_KINDS]
                    if not dispatched:
                        continue
                    loop = asyncio.get_running_loop()
                    try:
                        await self._await_dispatches(
                            run, {loop.create_task(self._dispatch(run, a)) for a in dispatched}
                        )
                    except asyncio.CancelledError:  # cut off at CLEANUP_S: stopped, and paid for
                        await self._stop_inflight(run)
                        raise
                log.warning("task %s: cleanup stopped after %d decisions", run.task_id, MAX_CLEANUP_DECISIONS)
        except TimeoutError:
            log.warning("task %s: cleanup cut off after %.0fs", run.task_id, CLEANUP_S)
        except AgentMeshError as exc:
            log.warning("task %s: cleanup failed: %s", run.task_id, exc)

    async def _call_planner(self, run: TaskRun, request: planner_pb2.DecideRequest) -> pb.Decision:
        delay = 0.05
        while True:
            try:
                return await self.workers.decide(request, timeout=self.limits.decide_timeout_s)
            except AgentMeshError as exc:
                if exc.reason == HISTORY_REQUIRED and not request.history_included:
                    # An SDK agent's planner holds no live state for the task: hand it the journal
                    # to replay from (once: it cannot need it twice for one call).
                    await self._add_history(run, request)
                    continue
                if not exc.retryable:
                    raise AgentMeshError(f"planner: {exc.message}", reason="PLANNER_ERROR") from exc
                log.warning("planner unavailable (%s); retrying in %.2fs", exc.reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            self._check_deadline(run)
            # An agent may be waiting on the executor's tools (react): hand in what is known now.
            del request.tools[:]
            request.tools.extend(await self.workers.tools.listed())
            if request.decision_seq == 1 and not run.agent_version and not request.agent_version:
                # A child whose agent nobody served when it first ran: pin it once somebody does.
                request.agent_version = await self.workers.newest(run.agent)

    async def _add_history(self, run: TaskRun, request: planner_pb2.DecideRequest) -> None:
        request.history.extend((await self.journal(run.tenant, run.task_id)).decisions)
        request.history_included = True

    # ------------------------------------------------------------------ actions

    async def _run_open(self, run: TaskRun) -> bool | None:
        """One turn of an eager task: start the open actions not yet running, settle the waits that
        can be, and ask for the next decision as soon as anything settled. None: go on; a bool:
        the task finished (False) or parked (True: run it again at once)."""
        run.changed.clear()  # before looking: whatever ends from here on wakes the wait below
        if run.dispatch_errors:
            raise run.dispatch_errors[0]
        while run.pending_cancels:  # resumed: what the agent gave up before a crash stays given up
            await self._give_up(run, run.pending_cancels.pop())
        self._start_open(run)
        run.wake_pending = False
        waits = [a for a in list(run.open.values()) if a.WhichOneof("kind") in WAIT_KINDS]
        waits = [a for a in waits if not await self._try_resolve(run, a)]
        if run.undelivered and (run.each or not run.open):
            return False if await self._decide_next(run) else None
        if not run.open:
            raise AgentMeshError("the agent asked for nothing and waits on nothing", reason="AGENT_STALLED")
        if not run.running:
            return await self._park_or_sleep(run, waits)
        wake_at = self._wake_time(run, waits)
        timeout = None if wake_at is None else max(0.0, wake_at - time.time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.changed.wait(), timeout)
        return None

    def _start_open(self, run: TaskRun) -> None:
        new = [
            a
            for a in run.open.values()
            if a.WhichOneof("kind") in DISPATCHED_KINDS
            and a.id not in run.running
            and a.id not in run.given_up
        ]
        if not new:
            return
        self._announce_started(run, new)
        loop = asyncio.get_running_loop()
        for action in new:
            task = loop.create_task(self._dispatch(run, action))
            run.running[action.id] = task
            run.inflight.add(task)
            task.add_done_callback(lambda t, i=action.id: self._dispatch_ended(run, i, t))

    def _announce_started(self, run: TaskRun, actions: list[pb.Action]) -> None:
        """One write announces them all, rather than one per action."""
        started = [
            ("action.started", json.dumps({"action_id": a.id, "key": a.key, "kind": a.WhichOneof("kind")}))
            for a in actions
        ]
        self._tx_nowait(lambda c: (None, records.append_if_live(c, run.task_id, started)))

    def _dispatch_ended(self, run: TaskRun, action_id: str, task: asyncio.Task[Any]) -> None:
        run.running.pop(action_id, None)
        run.inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            run.dispatch_errors.append(task.exception())  # type: ignore[arg-type]
        action = run.open.get(action_id)
        if task.cancelled() and action is not None and action_id in run.given_up and not run.finishing:
            # Given up while it waited on another task's identical run: nothing of its own ran,
            # so nothing recorded it. It settles CANCELLED here, at no cost.
            error = pb.TaskError(reason="CANCELLED", message="the agent gave it up")
            self._spawn_bg(self._settle(run, action, CANCELLED_A, error=error))
        run.changed.set()

    async def _give_up(self, run: TaskRun, ref: str) -> None:
        """An open action the agent no longer waits for (a lost `ctx.first` branch), named SEQ.INDEX:
        stop it. It settles CANCELLED, and the agent hears of it with a later decision."""
        place = tuple(int(n) for n in ref.split("."))
        action_id = next((i for i in run.open if action_place(i) == place), "")
        if not action_id:
            return  # settled meanwhile
        task = run.running.get(action_id)
        if task is not None:
            run.given_up.add(action_id)
            task.cancel()  # the dispatch records what it used, CANCELLED
            return
        action = run.open.get(action_id)
        if action is None:
            return  # settled meanwhile
        if action.WhichOneof("kind") == "spawn":
            # Settled once its children have ended, with what they spent (the join reads them).
            await self._cancel_spawned(run.task_id, [action_id], "its parent gave it up")
            return
        error = pb.TaskError(reason="CANCELLED", message="the agent gave it up")
        await self._settle(run, action, CANCELLED_A, error=error)

    async def _run_actions(self, run: TaskRun, pending: list[pb.Action]) -> bool | None:
        """Run what can run now. None: the decision is complete (decide again). True/False: the task
        parked (True: an input or wake came in meanwhile, so run it again at once)."""
        waits = [a for a in pending if a.WhichOneof("kind") in WAIT_KINDS]
        dispatched = [a for a in pending if a.WhichOneof("kind") in DISPATCHED_KINDS]
        assert run.decision is not None
        # Cleared before each look at the waits, not just before parking: a child that ends after
        # _try_resolve read its siblings wakes us through this flag, and parking returns it.
        run.wake_pending = False
        waits = [a for a in waits if not await self._try_resolve(run, a)]
        if dispatched:
            loop = asyncio.get_running_loop()
            self._announce_started(run, dispatched)
            await self._await_dispatches(run, {loop.create_task(self._dispatch(run, a)) for a in dispatched})
            if _group_settled(run.decision, run.results):
                return None
            run.wake_pending = False
            waits = [a for a in waits if not await self._try_resolve(run, a)]
        if not waits:
            return None
        return await self._park_or_sleep(run, waits)

    async def _await_dispatches(self, run: TaskRun, tasks: set[asyncio.Task[pb.ActionResult]]) -> None:
        """Wait for every dispatch; with `fail_fast` the first failure, with `first_success` the first
        success, cancels the rest. One done callback per task (asyncio.wait in a loop would cost
        O(n^2) for a wide fan-out)."""
        assert run.decision is not None
        fail_fast, first_success = run.decision.fail_fast, run.decision.first_success
        finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        run.inflight = pending = set(tasks)

        def on_done(task: asyncio.Task[pb.ActionResult]) -> None:
            pending.discard(task)
            if finished.done():
                return
            if not task.cancelled():
                error = task.exception()
                if error is not None:
                    finished.set_exception(error)
                    return
                status = task.result().status
                if (fail_fast and status != OK) or (first_success and status == OK):
                    finished.set_result(None)
                    return
            if not pending:
                finished.set_result(None)

        for task in tasks:
            task.add_done_callback(on_done)
        await finished  # on cancellation, _stop_inflight cancels what is still in `run.inflight`
        leftovers = [t for t in pending if not t.done()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.gather(*leftovers, return_exceptions=True)
        run.inflight = set()

    def _wake_time(self, run: TaskRun, waits: list[pb.Action]) -> float | None:
        """When the first of these waits can settle by itself (a sleep's end, an input's timeout),
        or the task's deadline passes; None if never."""
        wake_times = []
        for action in waits:
            kind = action.WhichOneof("kind")
            if kind == "sleep":
                wake_times.append(_opened(run, action) + action.sleep.seconds)
            elif kind == "await_input" and action.await_input.timeout_s > 0:
                wake_times.append(_opened(run, action) + action.await_input.timeout_s)
        if run.deadline:
            wake_times.append(run.deadline)
        return min(wake_times) if wake_times else None

    async def _park_or_sleep(self, run: TaskRun, waits: list[pb.Action]) -> bool | None:
        now = time.time()
        wake_at = self._wake_time(run, waits)
        only_sleeps = all(a.WhichOneof("kind") == "sleep" for a in waits)
        if only_sleeps and wake_at is not None and wake_at - now <= INLINE_SLEEP_S:
            await asyncio.sleep(max(0.0, wake_at - now))
            return None
        prompts = [a.await_input.prompt for a in waits if a.WhichOneof("kind") == "await_input"]
        waiting_for_input = bool(prompts)

        def op(conn: Any) -> tuple[bool | None, list[EventRow] | None]:
            events = records.park(
                conn, run.task_id, wake_at, prompts[0] if prompts else "", waiting_for_input, []
            )
            return (events is not None), events

        parked = await self._tx(op)
        if not parked:
            return None  # an input is already there: go on
        return run.wake_pending

    async def _settle(self, run: TaskRun, action: pb.Action, status: int, **fields: Any) -> None:
        """Record the result of an action the coordinator settles itself (waits, joins, skips)."""
        await self._record(run, pb.ActionResult(action_id=action.id, key=action.key, status=status, **fields))

    async def _try_resolve(self, run: TaskRun, action: pb.Action) -> bool:
        """Settle a wait-kind action if it can be settled now; True if it has a result."""
        kind = action.WhichOneof("kind")
        now = time.time()
        if kind == "sleep":
            if now < _opened(run, action) + action.sleep.seconds:
                return False
            await self._settle(run, action, OK, output_json=json.dumps({"slept_s": action.sleep.seconds}))
            return True
        if kind == "await_input":
            timeout = action.await_input.timeout_s
            timed_out = bool(timeout) and now >= _opened(run, action) + timeout
            data = await self.store.run(lambda c: records.take_input(c, run.task_id, action.id))
            if data is not None:
                await self._settle(run, action, OK, output_json=data)
                return True
            if timed_out:
                error = pb.TaskError(reason="INPUT_TIMEOUT", message=f"no input within {timeout:g}s")
                await self._settle(run, action, TIMED_OUT_A, error=error)
                return True
            return False
        if kind == "spawn":
            return await self._resolve_spawn(run, action)
        raise InvalidArgument(f"not a wait action: {kind}")

    async def _resolve_spawn(self, run: TaskRun, action: pb.Action) -> bool:
        spawn = action.spawn
        now = time.time()

        share = _budget_share(run.budget, run.cost, len(spawn.children))

        def op(conn: Any) -> tuple[tuple[list[pb.Task], bool], list[EventRow]]:
            children = records.children_of(conn, run.task_id, action.id)
            if children:
                return (children, False), []
            events: list[EventRow] = []
            for index, spec in enumerate(spawn.children):
                child = pb.Task(
                    id=records.new_task_id() + f"{index:04x}",
                    tenant=run.tenant,
                    agent=spec.agent,
                    input_json=spec.input_json or "{}",
                    priority=spec.priority or run.priority,
                    labels=dict(spec.labels),
                    parent_id=run.task_id,
                    created_at=now,
                    updated_at=now,
                    deadline=run.deadline,
                    budget=share,
                )
                stored, _, child_events = records.insert_task(
                    conn, child, "", parent_action=action.id, lease=self._lease()
                )
                events += child_events
                children.append(stored)
            return (children, True), events

        children, created = await self._tx(op)
        if created:
            for child in children:
                self.scheduler.push(child.id, child.tenant, child.priority)
            self._pump()
            return False
        outcome = _join(spawn.join, children)
        if outcome is None:
            return False
        status, error, losers = outcome
        if losers:
            # The join is decided, but settles only once the losers have ended: each one's end wakes
            # this parent again, and then the output shows them CANCELLED and the spend includes what
            # they used. A crash in between replays to the same join, with the losers cancelled.
            for loser in losers:
                with contextlib.suppress(AgentMeshError):
                    await self.cancel(None, loser, "join settled")
            return False
        output = {
            "children": [
                {
                    "id": c.id,
                    "state": STATE_NAMES[c.state],
                    "result": json.loads(c.result_json) if c.result_json else None,
                    "error": c.error.reason or None,
                    "message": c.error.message or None,
                }
                for c in children
            ]
        }
        # The children's spend becomes the parent's (and so on up): budgets and totals include it.
        spent = pb.Cost()
        for child in children:
            add_cost(spent, child.cost)
        await self._settle(run, action, status, output_json=json.dumps(output), error=error, cost=spent)
        return True

    async def _dispatch(self, run: TaskRun, action: pb.Action) -> pb.ActionResult:
        key = _share_key(run, action)
        if key is None:
            return await self._dispatch_own(run, action)
        running = self._shared.get(key)
        if running is not None:
            try:
                shared = await asyncio.shield(running)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # we are the ones being cancelled
                shared = None  # the run we joined was cancelled with its task: run our own
            if shared is not None:
                return await self._take_shared(run, action, shared)
        future: asyncio.Future[pb.ActionResult] = asyncio.get_running_loop().create_future()
        self._shared[key] = future
        try:
            result = await self._dispatch_own(run, action)
        except BaseException:
            future.cancel()
            raise
        finally:
            if self._shared.get(key) is future:
                del self._shared[key]
        future.set_result(result)
        return result

    async def _take_shared(self, run: TaskRun, action: pb.Action, shared: pb.ActionResult) -> pb.ActionResult:
        """Another task's identical run, as this action's result: its outcome, none of its cost."""
        result = pb.ActionResult()
        result.CopyFrom(shared)
        result.action_id, result.key, result.attempts = action.id, action.key, 1
        result.ClearField("cost")
        note = json.dumps(
            {"message": f"shared the result of an identical run ({shared.action_id})", "action_id": action.id}
        )
        self._tx_nowait(lambda c: (None, records.append_if_live(c, run.task_id, [("log", note)])))
        await self._record(run, result)
        return result

    async def _dispatch_own(self, run: TaskRun, action: pb.Action) -> pb.ActionResult:
        kind = action.WhichOneof("kind")
        timeout = action.timeout_s or self.limits.default_action_timeout_s
        if run.deadline:
            timeout = max(0.001, min(timeout, run.deadline - time.time()))
        attempts = max(1, action.retry.attempts)

        def sink(stream: str, data: bytes) -> None:
            payload = json.dumps(
                {"action_id": action.id, "stream": stream, "text": data.decode(errors="replace")}
            )
            self._tx_nowait(
                lambda c: (None, records.append_if_live(c, run.task_id, [("action.output", payload)]))
            )

        result = pb.ActionResult()
        specs: dict[str, pb.ToolSpec] = {}  # the executor's tools, read before each exec attempt
        # Every attempt is paid for, the failed and the cut-off ones too.
        charged = pb.Cost()
        attempt, lost = 1, 0
        # Time spent waiting for a worker that is away or starting counts against the attempt's timeout.
        attempt_ends = time.monotonic() + timeout
        tries: list[dict[str, Any]] = []  # each call to a worker, for the task's timeline
        while True:
            spent = pb.Cost()  # what this attempt used, if it is cancelled
            left = max(0.001, attempt_ends - time.monotonic())
            asked_at = began_at = time.time()
            try:
                async with self._slots[kind]:
                    began_at = time.time()  # after waiting for one of the coordinator's slots
                    if kind == "exec":
                        # An action that may have run before a crash, and may not run twice, is only
                        # joined or collected, never started again.
                        specs = await self.workers.tools.get()
                        known_only = action.id in run.maybe_started and not _may_rerun(action, specs)
                        result = await self.workers.run_exec(
                            run.task_id, action, left, sink, attempt, only_if_known=known_only, spent=spent
                        )
                        # Asked and answered by the executor; until then (unreachable), the next
                        # try must still only ask about it, not start it.
                        run.maybe_started.discard(action.id)
                        if result.error.reason == "UNKNOWN_ACTION":
                            _mark_ambiguous(
                                result, action, "it was running when the coordinator stopped", specs
                            )
                    elif kind == "infer":
                        result = await self.workers.run_infer(run.task_id, action, left, sink, spent)
                    else:
                        result = await self.workers.run_embed(run.task_id, action, left)
            except AgentMeshError as exc:
                status = TIMED_OUT_A if exc.reason == "DEADLINE_EXCEEDED" else FAILED_A
                result = pb.ActionResult(
                    status=status, error=pb.TaskError(reason=exc.reason, message=exc.message)
                )
            except asyncio.CancelledError:
                add_cost(charged, spent)
                await self._record_cancelled(run, action, attempt, charged)
                raise
            tries.append(_try_of(attempt, self.workers.addresses.get(kind, ""), asked_at, began_at, result))
            add_cost(charged, result.cost)
            result.cost.CopyFrom(charged)
            result.action_id, result.key, result.attempts = action.id, action.key, attempt
            if result.status != OK and _ambiguous(action, result, specs):
                what = f"its worker was lost ({result.error.reason}) while it ran"
                _mark_ambiguous(result, action, what, specs)
                break
            if result.status != OK and result.error.reason in WORKER_LOST:
                # The worker went away or is not ready (restart, crash, unreachable, loading): not the
                # action's failure, so it runs again without spending one of its attempts, for as
                # long as its timeout lasts.
                lost += 1
                delay = min(WORKER_WAIT_MAX_S, 0.1 * 2**lost)
                protocol = result.error.reason == "WORKER_PROTOCOL" and lost > MAX_PROTOCOL_ERRORS
                if protocol or time.monotonic() + delay >= attempt_ends:
                    _no_worker(result, kind, timeout)
                    break
                name = action.key or action.id
                note = f"worker not ready ({result.error.reason}); running {name} again in {delay:.1f}s"
            elif result.status == OK or attempt == attempts or not _retryable(result, action.retry):
                break
            else:
                delay = _backoff(action.retry, attempt)
                note = (
                    f"action {action.key or action.id} attempt {attempt} failed "
                    f"({result.error.reason or ACTION_STATUS_NAMES[result.status]}); retrying in {delay:.2f}s"
                )
                attempt += 1
                attempt_ends = time.monotonic() + delay + timeout
            payload = json.dumps({"message": note, "action_id": action.id})
            self._tx_nowait(lambda c, n=payload: (None, records.append_if_live(c, run.task_id, [("log", n)])))
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:  # cut off between attempts: the earlier ones are paid for
                await self._record_cancelled(run, action, attempt, charged)
                raise
        await self._record(run, result, tries)
        return result

    async def _record_cancelled(self, run: TaskRun, action: pb.Action, attempt: int, spent: pb.Cost) -> None:
        """Record an action cut off by its task's end or its group's settling, with what it used:
        a cancelled generation or test run is paid for all the same. Not on shutdown: the action
        has no result then, and runs again when the task resumes."""
        if run.interrupt == _Interrupt.SHUTDOWN:
            return
        if action.id in run.given_up:
            why = "the agent gave it up"
        elif run.interrupt == _Interrupt.FAIL and run.fail_error is not None:
            why = f"the task failed ({run.fail_error.reason})"
        elif run.interrupt:
            why = "the task was cancelled"
        elif run.finishing:
            why = "the task ended"
        elif run.decision is not None and run.decision.fail_fast:
            why = "a fail-fast sibling failed"
        else:
            why = "a sibling succeeded first"
        result = pb.ActionResult(
            action_id=action.id,
            key=action.key,
            status=CANCELLED_A,
            attempts=attempt,
            error=pb.TaskError(reason="CANCELLED", message=why),
            cost=spent,
        )
        # Shielded: the write must land though the caller is being cancelled (again).
        write = asyncio.ensure_future(self._record(run, result))
        run.late_writes.add(write)
        write.add_done_callback(run.late_writes.discard)
        await asyncio.shield(write)

    async def _record(
        self, run: TaskRun, result: pb.ActionResult, tries: list[dict[str, Any]] | None = None
    ) -> None:
        """Persist an action's result with the task's new cost; stop the task if it passed its budget."""
        result.cost.usd = self.prices.usd(result.cost)
        total = pb.Cost()
        total.CopyFrom(run.cost)
        add_cost(total, result.cost)
        finished = {
            "action_id": result.action_id,
            "key": result.key,
            "status": ACTION_STATUS_NAMES[result.status],
            "exit_code": result.exit_code,
            "attempts": result.attempts,
            "error": result.error.reason or None,
        }
        if tries:
            finished["tries"] = tries
        events = [("action.finished", json.dumps(finished))]
        if result.cost.usd or result.cost.tokens_in or result.cost.tokens_out:
            events.append(
                (
                    "cost",
                    json.dumps(
                        {
                            "action_id": result.action_id,
                            "action": cost_to_dict(result.cost),
                            "task": cost_to_dict(total),
                        }
                    ),
                )
            )
        # Under the decision that asked for it (an eager task's later decisions may be taken since).
        decision_seq = action_place(result.action_id)[0]

        def op(conn: Any) -> tuple[None, list[EventRow] | None]:
            return None, records.save_result(
                conn, run.task_id, decision_seq, result, total, events, self._fence
            )

        # The run's own view moves before the write is awaited: records that overlap (siblings
        # cancelled together) each add to the total the one before left, and the store applies
        # their writes in this same order.
        count_spend(run.agent, result.cost)
        run.results[result.action_id] = result
        if run.open.pop(result.action_id, None) is not None:
            run.opened_at.pop(result.action_id, None)
            run.undelivered.append(result.action_id)
        run.cost = total
        await self._tx(op)
        over = _over_budget(total, run.budget)
        if over:
            BUDGET_EXCEEDED.labels(run.agent).inc()
            self._interrupt(run, _Interrupt.FAIL, pb.TaskError(reason="BUDGET_EXCEEDED", message=over))

    async def _stop_inflight(self, run: TaskRun) -> None:
        tasks = [t for t in run.inflight if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.limits.cancel_grace_s)
        if run.late_writes:  # store writes: quick, but they must land before the terminal state
            await asyncio.wait(set(run.late_writes), timeout=LATE_WRITE_WAIT_S)
        run.inflight = set()

    async def _finish(
        self,
        task_id: str,
        state: int,
        *,
        parent_id: str | None,
        result_json: str = "",
        error: pb.TaskError | None = None,
        fence: str | None = None,
    ) -> None:
        """End the task. `fence`: a run's own end, written only while this coordinator holds it."""

        def op(conn: Any) -> tuple[tuple[bool, str | None, list[str]], list[EventRow]]:
            events = records.finish(conn, task_id, state, result_json=result_json, error=error, fence=fence)
            children = records.unfinished_children(conn, task_id) if state != records.SUCCEEDED else []
            return (bool(events), records.parent_of(conn, task_id), children), events

        try:
            finished, parent, children = await self._tx(op)
        except LeaseLost as exc:
            log.warning("not ending task %s here: %s", task_id, exc)
            return
        if children:  # nothing of a task that failed or was cancelled may go on running
            self._spawn_bg(self._cancel_children(task_id, children, f"parent {task_id} ended"))
        if not finished:
            return  # it had already finished: count and wake once only
        self._count_finish(state)
        if parent or parent_id:
            self._spawn_bg(self._wake(parent or parent_id or ""))

    def _count_finish(self, state: int) -> None:
        name = STATE_NAMES[state]
        self.finished_total[name] = self.finished_total.get(name, 0) + 1


# ---------------------------------------------------------------------- pure helpers


def _diverged(decision: pb.Decision) -> bool:
    """The agent ended its task because its code no longer matches the journal."""
    return decision.HasField("final") and decision.final.error.reason == NONDETERMINISM


def _opened(run: TaskRun, action: pb.Action) -> float:
    """When the decision that asked for `action` was taken."""
    return run.opened_at.get(action.id, run.decision_at)


def _log_failed_write(future: asyncio.Future[Any]) -> None:
    """For writes nobody awaits: a failure is logged, not left for the garbage collector to report."""
    if not future.cancelled() and future.exception() is not None:
        log.error("store write failed", exc_info=future.exception())


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidArgument(f"{what} is nested too deeply", reason="JSON_TOO_DEEP") from None
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}", reason="MALFORMED_JSON") from None


def _validate_submit(
    agent: str,
    input_json: str,
    priority: int,
    budget: pb.Budget,
    deadline_s: float,
    idempotency_key: str,
    labels: dict[str, str],
    max_input_bytes: int,
) -> None:
    violations = []
    if not agent:
        violations.append(("agent", "required"))
    elif len(agent) > 128:
        violations.append(("agent", "longer than 128 characters"))
    if len(input_json.encode()) > max_input_bytes:
        violations.append(("input", f"larger than {max_input_bytes} bytes"))
    if not -1000 <= priority <= 1000:
        violations.append(("priority", "must be between -1000 and 1000"))
    if budget.usd < 0 or budget.tokens < 0:
        violations.append(("budget", "must not be negative"))
    if deadline_s < 0:
        violations.append(("deadline_s", "must not be negative"))
    if len(idempotency_key) > 256:
        violations.append(("idempotency_key", "longer than 256 characters"))
    if len(labels) > 64 or any(len(k) > 128 or len(v) > 1024 for k, v in labels.items()):
        violations.append(("labels", "at most 64 labels, keys up to 128 and values up to 1024 characters"))
    if violations:
        raise InvalidArgument("; ".join(f"{f}: {d}" for f, d in violations), field_violations=violations)
    _parse_json(input_json or "null", "input")


def _try_of(
    attempt: int, worker: str, asked_at: float, began_at: float, result: pb.ActionResult
) -> dict[str, Any]:
    """One call to a worker as the timeline shows it: when, where, after how long a wait, how it ended."""
    return {
        "attempt": attempt,
        "worker": worker,
        "queued_ms": round((began_at - asked_at) * 1000, 3),
        "start": began_at,
        "end": time.time(),
        "status": ACTION_STATUS_NAMES[result.status],
        "reason": result.error.reason or None,
        "cost": cost_to_dict(result.cost),
    }


def _no_worker(result: pb.ActionResult, kind: str, timeout: float) -> None:
    """An action that waited its whole timeout for a worker fails UNAVAILABLE, naming the last cause."""
    worker = {"exec": "executor", "infer": "inference worker", "embed": "inference worker"}.get(kind, kind)
    cause = f"{result.error.reason}: {result.error.message}"
    result.status = FAILED_A
    result.error.CopyFrom(
        pb.TaskError(reason="UNAVAILABLE", message=f"no {worker} was ready within {timeout:g}s ({cause})")
    )


def _retryable(result: pb.ActionResult, policy: pb.RetryPolicy) -> bool:
    reason = result.error.reason or ("TIMED_OUT" if result.status == TIMED_OUT_A else "FAILED")
    if result.status == CANCELLED_A or reason in NEVER_RETRY:
        return False
    return not policy.retry_on or reason in policy.retry_on


def _backoff(policy: pb.RetryPolicy, attempt: int) -> float:
    base = policy.backoff_s if policy.backoff_s > 0 else 0.2
    cap = policy.max_backoff_s if policy.max_backoff_s > 0 else 60.0
    delay = min(cap, base * (2 ** (attempt - 1)))
    return delay * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not crypto


def _budget_share(budget: pb.Budget, spent: pb.Cost, children: int) -> pb.Budget:
    """Each child of a spawn gets an equal share of what is left of its parent's budget, so the
    children together can never spend more than the parent may (0: no limit, inherited as such)."""
    share = pb.Budget()
    if budget.usd:
        # A share of zero would mean "unlimited": a spent budget leaves each child the smallest positive one.
        share.usd = max((budget.usd - spent.usd) / children, 1e-12)
    if budget.tokens:
        share.tokens = max((budget.tokens - spent.tokens_in - spent.tokens_out) // children, 1)
    return share


def _over_budget(cost: pb.Cost, budget: pb.Budget) -> str:
    if budget.usd and cost.usd > budget.usd:
        return f"spent ${cost.usd:.6f} of a ${budget.usd:.6f} budget"
    if budget.tokens and cost.tokens_in + cost.tokens_out > budget.tokens:
        return f"used {cost.tokens_in + cost.tokens_out} tokens of a {budget.tokens} token budget"
    return ""


def _join(mode: int, children: list[pb.Task]) -> tuple[int, pb.TaskError | None, list[str]] | None:
    """Settle a spawn: (status, error, children to cancel), or None while it must still wait."""
    done = [c for c in children if c.state in TERMINAL_STATES]
    unfinished = [c.id for c in children if c.state not in TERMINAL_STATES]
    succeeded = [c for c in done if c.state == records.SUCCEEDED]
    failed = [c for c in done if c.state != records.SUCCEEDED]
    if mode == pb.JOIN_MODE_ANY:
        if succeeded:
            return OK, None, unfinished
        if not unfinished:
            return FAILED_A, pb.TaskError(reason="CHILDREN_FAILED", message="no child succeeded"), []
        return None
    if mode == pb.JOIN_MODE_FAIL_FAST and failed:
        # The failure that decided it, not a sibling the join itself cancelled.
        first = next((c for c in failed if c.state != records.CANCELLED), failed[0])
        return FAILED_A, _child_failed(first), unfinished
    if unfinished:
        return None
    if failed:
        return (
            FAILED_A,
            pb.TaskError(reason="CHILD_FAILED", message=f"{len(failed)} of {len(children)} children failed"),
            [],
        )
    return OK, None, []


def _child_failed(child: pb.Task) -> pb.TaskError:
    """A fail-fast join's error: the first failed child's own, named."""
    why = child.error.reason or STATE_NAMES[child.state]
    message = f"child {child.id} failed: {why}" + (f": {child.error.message}" if child.error.message else "")
    details = {"child": child.id, "reason": child.error.reason, "message": child.error.message}
    return pb.TaskError(reason="CHILD_FAILED", message=message, details_json=json.dumps(details))


def _share_key(run: TaskRun, action: pb.Action) -> tuple[str, bytes] | None:
    """What identical runs of a `share_identical` action have in common: the tenant, and a digest of
    the action's body and timeout. None when the action may not be shared."""
    if not action.share_identical or action.WhichOneof("kind") != "exec" or action.exec.network:
        return None
    body = action.exec.SerializeToString(deterministic=True) + repr(action.timeout_s).encode()
    return run.tenant, hashlib.sha256(body).digest()


def _mark_ambiguous(
    result: pb.ActionResult, action: pb.Action, what: str, specs: dict[str, pb.ToolSpec]
) -> None:
    why = why_not_repeatable(action, specs) or "its retry policy says so (retry.on_ambiguous: fail)"
    result.status = FAILED_A
    result.error.CopyFrom(
        pb.TaskError(
            reason="AMBIGUOUS_FAILURE",
            message=f"{action.key or action.id}: {what}, so it may have done part of its work; it is not "
            f"safe to repeat ({why}) and was not run again (retry.on_ambiguous: rerun allows it)",
        )
    )


def _may_rerun(action: pb.Action, specs: dict[str, pb.ToolSpec]) -> bool:
    """Whether the action may run again after it was (or may have been) cut off mid-run."""
    policy = action.retry.on_ambiguous
    if policy == pb.AMBIGUOUS_POLICY_RERUN:
        return True
    return policy != pb.AMBIGUOUS_POLICY_FAIL and not why_not_repeatable(action, specs)


def _ambiguous(action: pb.Action, result: pb.ActionResult, specs: dict[str, pb.ToolSpec]) -> bool:
    """Whether a failure leaves the action's effects unknown and the policy forbids running it again."""
    if action.WhichOneof("kind") != "exec" or result.error.reason not in MID_RUN_LOSS:
        return False
    return not _may_rerun(action, specs)


def _group_settled(decision: pb.Decision, results: dict[str, pb.ActionResult]) -> bool:
    """Whether the decision's group ended early: a failure under fail_fast, a success under
    first_success. Its unfinished actions are then cancelled and recorded as skipped."""
    if decision.fail_fast:
        return any(r.status != OK for r in results.values())
    if decision.first_success:
        return any(r.status == OK for r in results.values())
    return False
