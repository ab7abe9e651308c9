"""The coordinator's durable store: SQLite in WAL mode, written by one thread with group commit.

Guarantees:
- Every operation passed to `run()` executes inside a transaction on the store thread; its future
  resolves only after the transaction that holds it has committed (and, with synchronous=FULL, has
  been fsynced). Operations queued while a commit is in progress share the next transaction, so
  durability costs one fsync per batch, not one per event.
- An operation that raises is rolled back alone (a savepoint per operation); its batch commits.
- Events get a dense per-task sequence number (`tasks.last_seq`) in the same transaction as the
  change they describe.
This module imports neither grpc nor zmq.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
# (the caller's future, committed?, the value or the exception, what to call once committed)
_Outcome = tuple[asyncio.Future[Any], bool, Any, Callable[[Any], None] | None]

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  agent TEXT NOT NULL,
  priority INTEGER NOT NULL DEFAULT 0,
  budget_usd REAL NOT NULL DEFAULT 0,
  budget_tokens INTEGER NOT NULL DEFAULT 0,
  deadline REAL NOT NULL DEFAULT 0,
  labels TEXT NOT NULL DEFAULT '{}',
  idem_key TEXT,
  request_hash TEXT,
  parent_id TEXT,
  parent_action TEXT,
  state INTEGER NOT NULL,
  error BLOB,
  cost BLOB,
  decisions INTEGER NOT NULL DEFAULT 0,
  last_seq INTEGER NOT NULL DEFAULT 0,
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  input_prompt TEXT NOT NULL DEFAULT '',
  wake_at REAL,
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL,
  finished_at REAL NOT NULL DEFAULT 0
);
-- The large values live apart from the small, hot row: SQLite rewrites a whole row on every update,
-- and `tasks` is updated on every event (last_seq) and result (cost).
CREATE TABLE IF NOT EXISTS task_blobs (
  id TEXT PRIMARY KEY,
  input TEXT NOT NULL,
  result TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_idem ON tasks(tenant, idem_key) WHERE idem_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_list ON tasks(tenant, id);
CREATE INDEX IF NOT EXISTS tasks_unfinished ON tasks(state) WHERE state IN (1, 2, 3);
CREATE INDEX IF NOT EXISTS tasks_wake ON tasks(wake_at) WHERE wake_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_parent ON tasks(parent_id, parent_action) WHERE parent_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS decisions (
  task_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  body BLOB NOT NULL,
  created_at REAL NOT NULL,
  PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS results (
  task_id TEXT NOT NULL,
  action_id TEXT NOT NULL,
  decision_seq INTEGER NOT NULL,
  body BLOB NOT NULL,
  PRIMARY KEY (task_id, action_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
  task_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  ts REAL NOT NULL,
  kind TEXT NOT NULL,
  data TEXT NOT NULL,
  PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inputs (
  task_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  data TEXT NOT NULL,
  consumed_by TEXT,
  PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class EventRow:
    task_id: str
    seq: int
    ts: float
    kind: str
    data: str


def append_events(
    conn: sqlite3.Connection, task_id: str, items: Iterable[tuple[str, str]], now: float | None = None
) -> list[EventRow]:
    """Append events (kind, data_json) to a task, numbering them after its last seq."""
    items = list(items)
    if not items:
        return []
    now = time.time() if now is None else now
    (last,) = conn.execute(
        "UPDATE tasks SET last_seq = last_seq + ? WHERE id = ? RETURNING last_seq", (len(items), task_id)
    ).fetchone()
    first = last - len(items) + 1
    rows = [EventRow(task_id, first + i, now, kind, data) for i, (kind, data) in enumerate(items)]
    conn.executemany(
        "INSERT INTO events (task_id, seq, ts, kind, data) VALUES (?, ?, ?, ?, ?)",
        [(r.task_id, r.seq, r.ts, r.kind, r.data) for r in rows],
    )
    return rows


class Store:
    """The one writer thread and its queue. `run(fn)` is the only way in."""

    def __init__(self, path: Path, synchronous: str = "FULL", max_batch: int = 512) -> None:
        self.path = path
        self.synchronous = synchronous
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[
            tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]] | None
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0
        self.operations = 0

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(SCHEMA)
        return conn

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        conn = self._connect()
        self._thread = threading.Thread(target=self._main, args=(conn,), name="store-writer", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._thread = None

    def run(
        self, fn: Callable[[sqlite3.Connection], T], on_commit: Callable[[T], None] | None = None
    ) -> asyncio.Future[T]:
        """Queue `fn(conn)`; the future resolves after its transaction has committed.

        `on_commit(value)` runs on the loop once it has committed, even if the future was cancelled
        meanwhile (its waiter was interrupted): what was committed must still be announced."""
        assert self._loop is not None, "store not started"
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put((fn, future, on_commit))
        return future

    def _main(self, conn: sqlite3.Connection) -> None:
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
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(_deliver, outcomes)
            except RuntimeError:  # the loop closed under us: nobody is waiting any more
                return
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()

    def _execute(
        self, conn: sqlite3.Connection, batch: list[Any]
    ) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, future, on_commit in batch:
                conn.execute("SAVEPOINT op")
                try:
                    value = fn(conn)
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((future, False, exc, None))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((future, True, value, on_commit))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # The commit itself failed (disk full, I/O error): nothing of this batch is durable.
            log.error("store commit failed: %s", exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return [(future, False, exc, None) for _, future, _ in batch]
        self.commits += 1
        self.operations += len(batch)
        return outcomes


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
