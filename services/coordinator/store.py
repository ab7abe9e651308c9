"""The coordinator's durable store, written by one thread with group commit: SQLite in WAL mode by
default, or PostgreSQL (backends.py).

Guarantees:
- Every operation passed to `run()` executes inside a transaction on the store thread; its future
  resolves only after the transaction that holds it has committed (and, with SQLite's
  synchronous=FULL or PostgreSQL's default synchronous_commit, has been fsynced). Operations
  queued while a commit is in progress share the next transaction, so durability costs one fsync
  per batch, not one per event.
- An operation that raises is rolled back alone; its batch commits. (A batch runs without savepoints
  first; only a batch in which an operation raised runs again with one per operation.)
- Events get a dense per-task sequence number (`tasks.last_seq`) in the same transaction as the
  change they describe.
This module imports neither grpc nor zmq.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from protos.agentmesh.v1 import common_pb2 as pb
from services.coordinator.backends import Backend, SqliteBackend

log = logging.getLogger(__name__)

T = TypeVar("T")
# The terminal task states: SUCCEEDED, FAILED, CANCELLED; and as SQL.
TERMINAL_STATES = (pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELLED)
TERMINAL_SQL = ", ".join(str(s) for s in TERMINAL_STATES)


class LeaseLost(Exception):
    """A shared store: the task is another coordinator's now, so this one must not write for it."""
# (the caller's future, committed?, the value or the exception, what to call once committed)
_Outcome = tuple[asyncio.Future[Any], bool, Any, Callable[[Any], None] | None]

@dataclass(frozen=True, slots=True)
class EventRow:
    task_id: str
    seq: int
    ts: float
    kind: str
    data: str


def append_events(
    conn: Any,
    task_id: str,
    items: Iterable[tuple[str, str]],
    now: float | None = None,
    *,
    live_only: bool = False,
    also_set: str = "",
    also_params: tuple[Any, ...] = (),
    fence: str | None = None,
) -> list[EventRow] | None:
    """Append events (kind, data_json) to a task, numbering them after its last seq.

    With `live_only`, a finished (or missing) task gets nothing, and None is returned. `also_set`
    ("cost = ?, updated_at = ?") changes more of the task's row in the same statement: one round
    trip on PostgreSQL instead of three (look, update, number). With `fence` (a coordinator, on a
    shared store), nothing is written unless that coordinator holds the task: LeaseLost."""
    items = list(items)
    if not items and not also_set:
        return []
    now = time.time() if now is None else now
    assignments = ", ".join(filter(None, ["last_seq = last_seq + ?", also_set]))
    where = f" AND state NOT IN ({TERMINAL_SQL})" if live_only else ""
    if fence is not None:
        where += " AND owner = ?"
    row = conn.execute(
        f"UPDATE tasks SET {assignments} WHERE id = ?{where} RETURNING last_seq",
        (len(items), *also_params, task_id, *(() if fence is None else (fence,))),
    ).fetchone()
    if row is None:
        if fence is not None:
            holder = conn.execute("SELECT state, owner FROM tasks WHERE id = ?", (task_id,)).fetchone()
            finished = holder is None or holder[0] in TERMINAL_STATES
            if not (finished and live_only) and (holder is None or holder[1] != fence):
                raise LeaseLost(f"task {task_id} is held by {holder[1] if holder else 'nobody'} now")
        if live_only:
            return None
        raise LookupError(f"no task {task_id!r} to append events to")
    first = row[0] - len(items) + 1
    rows = [EventRow(task_id, first + i, now, kind, data) for i, (kind, data) in enumerate(items)]
    if rows:
        conn.executemany(
            "INSERT INTO events (task_id, seq, ts, kind, data) VALUES (?, ?, ?, ?, ?)",
            [(r.task_id, r.seq, r.ts, r.kind, r.data) for r in rows],
        )
    return rows


class Store:
    """The one writer thread and its queue. `run(fn)` is the only way in."""

    def __init__(self, where: Path | Backend, synchronous: str = "FULL", max_batch: int = 512) -> None:
        """`where`: a SQLite file, or a backend (backends.backend_for)."""
        self.backend: Backend = SqliteBackend(where, synchronous) if isinstance(where, Path) else where
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[Callable[[Any], Any], asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0
        self.operations = 0

    @property
    def path(self) -> str:
        """Where the tables are, for logs."""
        return self.backend.describe()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        conn = await asyncio.get_running_loop().run_in_executor(None, self.backend.connect)
        self._thread = threading.Thread(target=self._main, args=(conn,), name="store-writer", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._thread = None

    def run(
        self, fn: Callable[[Any], T], on_commit: Callable[[T], None] | None = None
    ) -> asyncio.Future[T]:
        """Queue `fn(conn)`; the future resolves after its transaction has committed.

        `on_commit(value)` runs on the loop once it has committed, even if the future was cancelled
        meanwhile (its waiter was interrupted): what was committed must still be announced."""
        assert self._loop is not None, "store not started"
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put((fn, future, on_commit))
        return future

    def _main(self, conn: Any) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            outcomes = self._execute(conn, batch)
            if not self.backend.usable(conn):
                conn = self._reconnect(conn)
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(_deliver, outcomes)
            except RuntimeError:  # the loop closed under us: nobody is waiting any more
                return
        self.backend.close(conn)

    def _reconnect(self, conn: Any) -> Any:
        """A new connection after the old one broke (a database server restarted); the old one
        if the server cannot be reached yet: the next batch fails clearly and tries again."""
        try:
            fresh = self.backend.connect()
        except Exception as exc:  # noqa: BLE001 - the thread must live on to try again
            log.error("store connection lost, and reconnecting failed: %s", exc)
            return conn
        log.warning("store connection lost; reconnected to %s", self.backend.describe())
        return fresh

    def _execute(self, conn: Any, batch: list[Any]) -> list[_Outcome]:
        try:
            try:
                # Pipelined where the backend can (PostgreSQL): statements whose results nobody
                # reads go out without waiting for the server; a result that is read waits for
                # everything before it. An error may then surface at a later statement than its
                # own, so the isolated pass below runs unpipelined.
                with self.backend.pipelined(conn):
                    outcomes = self._apply(conn, batch, isolate=False)
            except (_OperationFailed, self.backend.error):
                # An operation raised (or a pipelined statement failed at the commit): do the batch
                # again, each operation under a savepoint, so the failing ones roll back alone.
                # Operations are functions of the connection only, so running them again after
                # the rollback is running them once. A broken connection fails again below.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                outcomes = self._apply(conn, batch, isolate=True)
        except self.backend.error as exc:
            # The commit itself failed (disk full, I/O error, the server gone): nothing of this
            # batch is durable.
            log.error("store commit failed: %s", exc)
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except self.backend.error as rollback_failed:
                    log.error("store rollback failed: %s", rollback_failed)
            return [(future, False, exc, None) for _, future, _ in batch]
        self.commits += 1
        self.operations += len(batch)
        return outcomes

    def _apply(self, conn: Any, batch: list[Any], isolate: bool) -> list[_Outcome]:
        """The batch in one transaction, committed. Without `isolate`, the first operation that
        raises aborts the batch (_OperationFailed); with it, each runs under a savepoint (two more
        statements each: on PostgreSQL, two more round trips) and a failing one rolls back alone."""
        outcomes: list[_Outcome] = []
        conn.execute(self.backend.begin)
        for fn, future, on_commit in batch:
            if not isolate:
                try:
                    value = fn(conn)
                except BaseException as exc:  # noqa: BLE001 - the batch runs again, isolated
                    raise _OperationFailed from exc
                outcomes.append((future, True, value, on_commit))
                continue
            conn.execute("SAVEPOINT op")
            try:
                value = fn(conn)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                conn.execute("ROLLBACK TO SAVEPOINT op")
                conn.execute("RELEASE SAVEPOINT op")
                outcomes.append((future, False, exc, None))
            else:
                conn.execute("RELEASE SAVEPOINT op")
                outcomes.append((future, True, value, on_commit))
        conn.execute("COMMIT")
        return outcomes


class _OperationFailed(Exception):
    """An operation of an unisolated batch raised."""


def _deliver(outcomes: list[_Outcome]) -> None:
    for future, ok, value, on_commit in outcomes:
        if on_commit is not None:
            try:
                on_commit(value)
            except Exception:  # noqa: BLE001 - one listener's bug must not strand the other waiters
                log.exception("store commit listener failed")
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
