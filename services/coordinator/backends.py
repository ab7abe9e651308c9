"""Where the store keeps its tables: SQLite in the data dir (the embedded default) or PostgreSQL.

Both hold the same schema, and records.py speaks one SQL to both: `?` placeholders, upserts with
`ON CONFLICT`, `RETURNING`. A backend only opens the connection, creates the tables, and names the
statements that differ (how a write transaction begins, which exception a failed commit raises).
The PostgreSQL connection is wrapped to look like sqlite3's (`execute` -> cursor, `executemany`,
`in_transaction`), translating `?` to psycopg's `%s`.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from pathlib import Path
from typing import Any, Protocol

# The one schema; {types} differ between the engines (SQLite's REAL is a double, PostgreSQL's a float).
SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  agent TEXT NOT NULL,
  priority INTEGER NOT NULL DEFAULT 0,
  budget_usd {double} NOT NULL DEFAULT 0,
  budget_tokens BIGINT NOT NULL DEFAULT 0,
  deadline {double} NOT NULL DEFAULT 0,
  labels TEXT NOT NULL DEFAULT '{{}}',
  idem_key TEXT,
  request_hash TEXT,
  parent_id TEXT,
  parent_action TEXT,
  state INTEGER NOT NULL,
  error {blob},
  cost {blob},
  decisions INTEGER NOT NULL DEFAULT 0,
  last_seq BIGINT NOT NULL DEFAULT 0,
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  input_prompt TEXT NOT NULL DEFAULT '',
  wake_at {double},
  created_at {double} NOT NULL,
  updated_at {double} NOT NULL,
  finished_at {double} NOT NULL DEFAULT 0,
  -- The coordinator that runs or queues the task, and until when its claim holds without a
  -- heartbeat (a shared PostgreSQL store); NULL while nobody holds it (WAITING, or never claimed).
  owner TEXT,
  lease_until {double},
  -- The agent version the task runs on: chosen at submit, or at a child's first decision.
  agent_version TEXT NOT NULL DEFAULT '',
  -- Decisions asked for as each action settles: the oldest decision with an action that has no
  -- result, or a result no decision was taken on yet (what a resume reads from).
  open_from INTEGER NOT NULL DEFAULT 0,
  -- Waiting for an operator (its code no longer matches its journal): see ResolveTask.
  held INTEGER NOT NULL DEFAULT 0,
  -- How often an operator reset it to an earlier decision: its later action ids carry it, so no
  -- worker mistakes a new action for a dropped one of the same place.
  resets INTEGER NOT NULL DEFAULT 0
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
  body {blob} NOT NULL,
  created_at {double} NOT NULL,
  PRIMARY KEY (task_id, seq)
){without_rowid};
CREATE TABLE IF NOT EXISTS results (
  task_id TEXT NOT NULL,
  action_id TEXT NOT NULL,
  decision_seq INTEGER NOT NULL,
  body {blob} NOT NULL,
  PRIMARY KEY (task_id, action_id)
){without_rowid};
CREATE TABLE IF NOT EXISTS events (
  task_id TEXT NOT NULL,
  seq BIGINT NOT NULL,
  ts {double} NOT NULL,
  kind TEXT NOT NULL,
  data TEXT NOT NULL,
  PRIMARY KEY (task_id, seq)
){without_rowid};
-- API keys made with `agentmesh keys create` (access.py): only their SHA-256 is kept.
CREATE TABLE IF NOT EXISTS api_keys (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  digest TEXT NOT NULL UNIQUE,
  label TEXT NOT NULL DEFAULT '',
  created_at {double} NOT NULL,
  expires_at {double} NOT NULL DEFAULT 0,
  revoked_at {double} NOT NULL DEFAULT 0
);
-- Who cancelled, answered, resolved, or changed a key, and when (access.py).
CREATE TABLE IF NOT EXISTS audit (
  at {double} NOT NULL,
  id TEXT NOT NULL,
  tenant TEXT NOT NULL,
  key_id TEXT NOT NULL,
  action TEXT NOT NULL,
  target TEXT NOT NULL,
  detail TEXT NOT NULL DEFAULT '{{}}',
  PRIMARY KEY (at, id)
);
CREATE INDEX IF NOT EXISTS audit_tenant ON audit(tenant, at);
CREATE TABLE IF NOT EXISTS inputs (
  task_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  data TEXT NOT NULL,
  consumed_by TEXT,
  PRIMARY KEY (task_id, seq)
){without_rowid};
"""


class Backend(Protocol):
    # The exception a failed statement or commit raises.
    error: type[Exception]
    # How a write transaction begins (SQLite takes its write lock at once with IMMEDIATE).
    begin: str
    # Whether several coordinators may use it at once (then tasks are leased).
    shared: bool
    # What a SELECT that picks rows to claim ends with.
    skip_locked: str

    def connect(self) -> Any:
        """A connection with the tables in place, in autocommit mode: the store begins and commits."""
        ...

    def close(self, conn: Any) -> None: ...

    def usable(self, conn: Any) -> bool:
        """False once the connection is broken for good (the server went away)."""
        ...

    def pipelined(self, conn: Any) -> contextlib.AbstractContextManager[Any]:
        """A context in which statements may go out without waiting for each other's results."""
        ...

    def describe(self) -> str:
        """Where the tables are, for logs (no password)."""
        ...


class SqliteBackend:
    error = sqlite3.Error
    begin = "BEGIN IMMEDIATE"
    # A file on one machine: one coordinator, which owns every task in it.
    shared = False
    skip_locked = ""

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous

    def connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(SCHEMA.format(double="REAL", blob="BLOB", without_rowid=" WITHOUT ROWID"))
        for table, name, kind in ADDED_COLUMNS:
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if name not in have:  # a store made by an older release
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind.format(double='REAL')}")
        for statement in LATE_INDEXES:
            conn.execute(statement)
        return conn

    def close(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()

    def usable(self, conn: sqlite3.Connection) -> bool:
        return True  # a file: an I/O error fails the batch, and the next one tries again

    def pipelined(self, conn: sqlite3.Connection) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()  # in-process calls: nothing to wait for

    def describe(self) -> str:
        return f"sqlite:{self.path}"


class PostgresBackend:
    begin = "BEGIN"
    # Several coordinators may share it: each task is leased by one of them.
    shared = True
    # Coordinators claiming lapsed tasks at once each take different rows, without waiting.
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str) -> None:
        # Imported here: only a coordinator configured for PostgreSQL needs the driver.
        import psycopg  # noqa: PLC0415

        self.url = url
        self.error = psycopg.Error

    def connect(self) -> PgConnection:
        import psycopg  # noqa: PLC0415

        raw = psycopg.connect(
            self.url,
            autocommit=True,
            # A server that stops answering must not hold the store's one thread for minutes.
            connect_timeout=10,
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        )
        conn = PgConnection(raw)
        # Two coordinators starting at once may both create the tables: one at a time.
        conn.execute("BEGIN")
        conn.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
        for statement in _statements(
            SCHEMA.format(double="DOUBLE PRECISION", blob="BYTEA", without_rowid="")
        ):
            conn.execute(statement)
        for table, name, kind in ADDED_COLUMNS:
            column = f"{name} {kind.format(double='DOUBLE PRECISION')}"
            conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column}")
        for statement in LATE_INDEXES:
            conn.execute(statement)
        conn.execute("COMMIT")
        return conn

    def close(self, conn: PgConnection) -> None:
        conn.close()

    def usable(self, conn: PgConnection) -> bool:
        return not (conn.raw.closed or conn.raw.broken)

    def pipelined(self, conn: PgConnection) -> contextlib.AbstractContextManager[Any]:
        return conn.raw.pipeline()  # libpq's pipeline mode: one round trip per result read

    def describe(self) -> str:
        from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415

        info = conninfo_to_dict(self.url)
        return f"postgresql://{info.get('host', '')}:{info.get('port', '')}/{info.get('dbname', '')}"


# Advisory lock key (a signed int64) for creating and migrating the schema.
SCHEMA_LOCK = int.from_bytes(b"agntmesh", "big", signed=True)
# No statement of the store takes long; one that does means the server is in trouble.
STATEMENT_TIMEOUT_MS = 60_000
# Columns added after the first release: (table, name, type). Added to older tables at start.
ADDED_COLUMNS = [
    ("tasks", "owner", "TEXT"),
    ("tasks", "lease_until", "{double}"),
    ("tasks", "agent_version", "TEXT NOT NULL DEFAULT ''"),
    ("tasks", "open_from", "INTEGER NOT NULL DEFAULT 0"),
    ("tasks", "held", "INTEGER NOT NULL DEFAULT 0"),
    ("tasks", "resets", "INTEGER NOT NULL DEFAULT 0"),
    ("results", "settled", "BIGINT NOT NULL DEFAULT 0"),
]
# Made after the added columns exist.
LATE_INDEXES = ["CREATE INDEX IF NOT EXISTS tasks_lease ON tasks(lease_until) WHERE state IN (1, 2)"]


class PgConnection:
    """A psycopg connection that reads like sqlite3's, for records.py."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        return self.raw.execute(_pg(sql), params)

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        with self.raw.cursor() as cursor:
            cursor.executemany(_pg(sql), rows)

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus  # noqa: PLC0415

        return self.raw.info.transaction_status != TransactionStatus.IDLE

    def close(self) -> None:
        self.raw.close()


@functools.lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    """sqlite3's `?` placeholders as psycopg's `%s` (our SQL has no other `?` or `%`)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _statements(script: str) -> list[str]:
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def backend_for(data_dir: Path, store_url: str, synchronous: str = "FULL", file_name: str = "") -> Backend:
    """PostgreSQL when `store_url` names it, else SQLite in `data_dir`."""
    if store_url.startswith(("postgresql://", "postgres://")):
        return PostgresBackend(store_url)
    if store_url:
        raise ValueError(
            f"store_url: a postgresql:// URL, or empty for SQLite (got {store_url.split(':')[0]!r})"
        )
    return SqliteBackend(data_dir / file_name, synchronous)
