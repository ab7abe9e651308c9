"""The coordinator's store (group commit on one writer thread) and its record operations, on both
backends: a real SQLite file in tmp_path, and a database of its own on the suite's PostgreSQL server.
Each test drives the store from its own event loop with `asyncio.run`."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from protos.agentmesh.v1 import common_pb2 as pb
from services.coordinator import records
from services.coordinator.backends import Backend, PostgresBackend
from services.coordinator.store import LeaseLost, Store, append_events
from services.runtime.errors import AlreadyExists, FailedPrecondition, NotFound

T = TypeVar("T")
BOUND_S = 20.0  # every wait in these tests is bounded


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Path | Backend:
    """Where a test's store keeps its tables; the same place each time the test opens it."""
    if request.param == "sqlite":
        return tmp_path / "store.db"
    return PostgresBackend(request.getfixturevalue("postgres_server").new_database())


def with_store(where: Path | Backend, body: Callable[[Store], Awaitable[T]], **kwargs: Any) -> T:
    async def main() -> T:
        store = Store(where, **kwargs)
        await store.start()
        try:
            return await asyncio.wait_for(body(store), BOUND_S)
        finally:
            await asyncio.wait_for(store.close(), BOUND_S)

    return asyncio.run(main())


def in_store(where: Path | Backend, *ops: Callable[[sqlite3.Connection], Any]) -> list[Any]:
    """Run each op in turn (one transaction each); their values, or the exception each raised."""

    async def body(store: Store) -> list[Any]:
        out = []
        for op in ops:
            try:
                out.append(await store.run(op))
            except Exception as exc:  # noqa: BLE001 - returned for the test to inspect
                out.append(exc)
        return out

    return with_store(where, body)


def make_task(task_id: str = "t1", tenant: str = "alpha", key: str = "", **fields: Any) -> pb.Task:
    return pb.Task(
        id=task_id,
        tenant=tenant,
        agent="pipeline",
        input_json='{"steps": []}',
        idempotency_key=key,
        created_at=1000.0,
        updated_at=1000.0,
        **fields,
    )


def insert(task_id: str = "t1", tenant: str = "alpha", key: str = "", request_hash: str = "h"):
    def op(conn: sqlite3.Connection) -> tuple[pb.Task, bool, list[Any]]:
        return records.insert_task(conn, make_task(task_id, tenant, key), request_hash)

    return op


def events(conn: sqlite3.Connection, task_id: str) -> list[tuple[int, str, dict[str, Any]]]:
    return [(e.seq, e.kind, json.loads(e.data)) for e in records.events_after(conn, task_id, 0, 1000)]


# ---------------------------------------------------------------- Store: group commit


def test_run_returns_the_operations_value_after_commit(tmp_path):
    async def body(store: Store) -> Any:
        task, created, rows = await store.run(insert())
        # A second connection sees it: the transaction has committed before the future resolved.
        other = sqlite3.connect(tmp_path / "store.db")
        try:
            (count,) = other.execute("SELECT COUNT(*) FROM tasks").fetchone()
        finally:
            other.close()
        return task, created, rows, count

    task, created, rows, count = with_store(tmp_path / "store.db", body)
    assert created and task.id == "t1" and task.state == records.QUEUED
    assert [(r.seq, r.kind) for r in rows] == [(1, "state")]
    assert count == 1


def test_operations_queued_together_commit_in_one_batch(where):
    gate = threading.Event()

    def first(conn: sqlite3.Connection) -> str:
        # Holds the writer until every other op is queued, so they all meet in the next batch.
        assert gate.wait(BOUND_S)
        return "first"

    async def body(store: Store) -> tuple[list[Any], int, int]:
        futures = [store.run(first)]
        futures += [store.run(insert(f"t{i:03d}")) for i in range(199)]
        gate.set()
        values = await asyncio.gather(*futures)
        return values, store.commits, store.operations

    values, commits, operations = with_store(where, body)
    assert len(values) == 200 and values[0] == "first"
    assert all(created for _, created, _ in values[1:])
    assert operations == 200
    assert commits <= 2  # the held batch, then everyone who queued meanwhile
    assert commits < operations


def test_a_batch_is_never_larger_than_max_batch(where):
    gate = threading.Event()

    async def body(store: Store) -> tuple[int, int]:
        futures = [store.run(lambda c: gate.wait(BOUND_S))]
        futures += [store.run(lambda c: c.execute("SELECT 1").fetchone()) for _ in range(99)]
        gate.set()
        await asyncio.gather(*futures)
        return store.commits, store.operations

    commits, operations = with_store(where, body, max_batch=10)
    assert operations == 100
    assert commits >= 10


def test_an_operation_that_raises_is_rolled_back_alone(where):
    gate = threading.Event()

    def failing(conn: sqlite3.Connection) -> None:
        records.insert_task(conn, make_task("doomed"), "h")
        raise ValueError("boom")

    async def body(store: Store) -> Any:
        hold = store.run(lambda c: gate.wait(BOUND_S))
        before = store.run(insert("before"))
        bad = store.run(failing)
        after = store.run(insert("after"))
        gate.set()
        outcomes = await asyncio.gather(hold, before, bad, after, return_exceptions=True)
        commits = store.commits
        ids = await store.run(lambda c: [r[0] for r in c.execute("SELECT id FROM tasks ORDER BY id")])
        doomed_events = await store.run(lambda c: records.events_after(c, "doomed", 0, 10))
        return outcomes, commits, ids, doomed_events

    outcomes, commits, ids, doomed_events = with_store(where, body)
    assert isinstance(outcomes[2], ValueError) and str(outcomes[2]) == "boom"
    assert outcomes[1][1] is True and outcomes[3][1] is True
    assert ids == ["after", "before"]
    assert doomed_events == []  # the failed op's events went with it
    assert commits <= 2  # the batch-mates committed together; no commit per op


def test_a_database_error_in_one_operation_does_not_spoil_its_batch(where):
    # On PostgreSQL the error aborts the whole transaction until its savepoint is rolled back.
    gate = threading.Event()

    async def body(store: Store) -> Any:
        futures = [
            store.run(lambda c: gate.wait(BOUND_S)),
            store.run(insert("t1")),
            store.run(insert("t1")),  # primary key clash in the same batch: IntegrityError
            store.run(insert("t2")),
        ]
        gate.set()
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        ids = await store.run(lambda c: [r[0] for r in c.execute("SELECT id FROM tasks ORDER BY id")])
        return outcomes, ids

    outcomes, ids = with_store(where, body)
    error = sqlite3.IntegrityError if isinstance(where, Path) else psycopg.errors.UniqueViolation
    assert isinstance(outcomes[2], error), outcomes[2]
    assert outcomes[1][1] is True and outcomes[3][1] is True
    assert ids == ["t1", "t2"]


def test_the_store_reconnects_after_postgresql_drops_its_connection(postgres_server):
    url = postgres_server.new_database()

    async def body(store: Store) -> Any:
        await store.run(insert("t1"))
        with psycopg.connect(url, autocommit=True) as admin:  # the server ends our session
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(psycopg.OperationalError):  # the batch that was cut off fails, clearly
            await store.run(insert("t2"))
        await store.run(insert("t3"))  # and the next one runs on a new connection
        return await store.run(lambda c: [r[0] for r in c.execute("SELECT id FROM tasks ORDER BY id")])

    assert with_store(PostgresBackend(url), body) == ["t1", "t3"]


def test_on_commit_runs_even_when_the_waiter_gave_up(where):
    """A caller interrupted while its write is queued (a cancelled task) must not silence what the
    write committed: `on_commit` still runs; a failed write never calls it."""

    async def body(store: Store) -> tuple[list[Any], Any]:
        seen: list[Any] = []
        release = threading.Event()
        # Hold the writer thread so the next write is still queued when its waiter is cancelled.
        blocker = store.run(lambda c: release.wait(BOUND_S))
        waiter = asyncio.ensure_future(store.run(lambda c: "committed", on_commit=seen.append))
        failing = store.run(lambda c: 1 / 0, on_commit=seen.append)
        await asyncio.sleep(0)
        waiter.cancel()
        release.set()
        await blocker
        with pytest.raises(ZeroDivisionError):
            await failing
        return seen, waiter.cancelled()

    seen, cancelled = with_store(where, body)
    assert cancelled and seen == ["committed"]


def test_run_before_start_is_refused(tmp_path):
    store = Store(tmp_path / "s.db")
    with pytest.raises(AssertionError):
        store.run(lambda c: None)


def test_data_survives_close_and_reopen(where):
    in_store(where, insert("t1"))
    (task,) = in_store(where, lambda c: records.get_task(c, "t1"))
    assert task.id == "t1" and task.last_seq == 1


# ---------------------------------------------------------------- events


def test_append_events_gives_dense_per_task_seqs(where):
    def op(conn: sqlite3.Connection) -> Any:
        records.insert_task(conn, make_task("a"), "h")
        records.insert_task(conn, make_task("b"), "h")
        first = append_events(conn, "a", [("log", "{}"), ("log", "{}")], now=5.0)
        other = append_events(conn, "b", [("cost", "{}")])
        second = append_events(conn, "a", [("decision", "{}")])
        none = append_events(conn, "a", [])
        return first, other, second, none, events(conn, "a"), records.task_progress(conn, "a")

    ((first, other, second, none, all_a, progress),) = in_store(where, op)
    assert [(r.task_id, r.seq, r.kind, r.ts) for r in first] == [("a", 2, "log", 5.0), ("a", 3, "log", 5.0)]
    assert [r.seq for r in other] == [2]
    assert [r.seq for r in second] == [4]
    assert none == []
    assert [seq for seq, _, _ in all_a] == [1, 2, 3, 4]
    assert progress == (records.QUEUED, 4)


def test_events_after_pages_from_a_seq(where):
    def op(conn: sqlite3.Connection) -> Any:
        records.insert_task(conn, make_task("a"), "h")
        append_events(conn, "a", [("log", json.dumps({"n": i})) for i in range(5)])
        return records.events_after(conn, "a", 2, 2), records.events_after(conn, "a", 6, 10)

    ((page, tail),) = in_store(where, op)
    assert [e.seq for e in page] == [3, 4]
    assert tail == []


def test_seqs_stay_dense_across_transactions(where):
    results = in_store(
        where,
        insert("a"),
        lambda c: append_events(c, "a", [("log", "{}")]),
        lambda c: records.set_state(c, "a", records.RUNNING),
        lambda c: [seq for seq, _, _ in events(c, "a")],
    )
    assert results[-1] == [1, 2, 3]


# ---------------------------------------------------------------- insert_task and idempotency


def test_insert_task_stores_the_task_and_a_queued_event(where):
    results = in_store(where, insert("t1"), lambda c: (records.get_task(c, "t1"), events(c, "t1")))
    task, created, rows = results[0]
    stored, evs = results[1]
    assert created
    assert stored.state == records.QUEUED and stored.tenant == "alpha" and stored.last_seq == 1
    assert evs == [(1, "state", {"state": "QUEUED", "terminal": False})]
    assert [r.seq for r in rows] == [1]


def test_same_idempotency_key_and_hash_returns_the_first_task(where):
    results = in_store(
        where,
        insert("first", key="k1", request_hash="same"),
        insert("second", key="k1", request_hash="same"),
        lambda c: c.execute("SELECT COUNT(*) FROM tasks").fetchone()[0],
    )
    first, created1, _ = results[0]
    again, created2, rows2 = results[1]
    assert created1 and not created2
    assert again.id == "first"
    assert again.idempotency_key == "k1"
    assert rows2 == []
    assert results[2] == 1


def test_same_idempotency_key_with_a_different_request_is_refused(where):
    results = in_store(
        where,
        insert("first", key="k1", request_hash="one"),
        insert("second", key="k1", request_hash="two"),
        lambda c: c.execute("SELECT id FROM tasks").fetchall(),
    )
    err = results[1]
    assert isinstance(err, AlreadyExists)
    assert err.reason == "IDEMPOTENCY_KEY_REUSED"
    assert err.details == {"task_id": "first"}
    assert results[2] == [("first",)]


def test_idempotency_keys_are_per_tenant(where):
    results = in_store(
        where,
        insert("a1", tenant="alpha", key="k", request_hash="one"),
        insert("b1", tenant="beta", key="k", request_hash="two"),
    )
    assert results[0][1] is True and results[1][1] is True
    assert results[1][0].id == "b1"


def test_tasks_without_a_key_are_never_deduplicated(where):
    results = in_store(where, insert("t1"), insert("t2"))
    assert results[0][1] and results[1][1]


# ---------------------------------------------------------------- finish and cancel


def test_finish_sets_the_terminal_state_and_its_event_is_last(where):
    error = pb.TaskError(reason="STEP_FAILED", message="step(s) failed: a")
    results = in_store(
        where,
        insert("t1"),
        lambda c: records.set_state(c, "t1", records.RUNNING),
        lambda c: records.finish(
            c, "t1", records.FAILED, result_json='{"steps": {}}', error=error, now=2000.0
        ),
        lambda c: (records.get_task(c, "t1"), events(c, "t1")),
    )
    finished = results[2]
    task, evs = results[3]
    assert [(r.seq, r.kind) for r in finished] == [(3, "state")]
    assert task.state == records.FAILED
    assert task.result_json == '{"steps": {}}'
    assert task.error == error
    assert task.finished_at == 2000.0
    assert evs[-1] == (
        3,
        "state",
        {"state": "FAILED", "terminal": True, "reason": "STEP_FAILED", "message": "step(s) failed: a"},
    )


def test_finish_on_a_terminal_task_is_a_no_op(where):
    results = in_store(
        where,
        insert("t1"),
        lambda c: records.finish(c, "t1", records.SUCCEEDED, result_json='"first"', now=10.0),
        lambda c: records.finish(c, "t1", records.FAILED, result_json='"second"', now=20.0),
        lambda c: records.finish(c, "t1", records.CANCELLED),
        lambda c: (records.get_task(c, "t1"), events(c, "t1")),
    )
    assert results[2] == [] and results[3] == []
    task, evs = results[4]
    assert (task.state, task.result_json, task.finished_at) == (records.SUCCEEDED, '"first"', 10.0)
    assert evs[-1] == (2, "state", {"state": "SUCCEEDED", "terminal": True})
    assert len(evs) == 2


def test_finish_of_a_missing_task_is_a_no_op(where):
    assert in_store(where, lambda c: records.finish(c, "nope", records.FAILED)) == [[]]


def test_nothing_is_appended_after_the_terminal_event(where):
    result = pb.ActionResult(action_id="t1/1/0", key="a", status=pb.ACTION_STATUS_OK)
    results = in_store(
        where,
        insert("t1"),
        lambda c: records.finish(c, "t1", records.CANCELLED),
        lambda c: records.save_result(c, "t1", 1, result, pb.Cost(), [("action.finished", "{}")]),
        lambda c: records.append_if_live(c, "t1", [("log", "{}")]),
        lambda c: records.park(c, "t1", None, "", False, [("log", "{}")]),
        lambda c: events(c, "t1"),
    )
    assert results[2] is None
    assert results[3] == []
    assert results[4] == []
    assert results[5][-1] == (2, "state", {"state": "CANCELLED", "terminal": True})


def test_request_cancel_records_the_intent_once(where):
    results = in_store(
        where,
        insert("t1"),
        lambda c: records.request_cancel(c, "t1", "alpha", "user asked"),
        lambda c: records.request_cancel(c, "t1", "alpha", "asked again"),
        lambda c: (records.get_task(c, "t1"), events(c, "t1")),
    )
    task1, new1, rows1 = results[1]
    task2, new2, rows2 = results[2]
    assert new1 and task1.cancel_requested
    assert [r.kind for r in rows1] == ["log"]
    assert not new2 and task2.cancel_requested and rows2 == []
    stored, evs = results[3]
    assert stored.cancel_requested and stored.state == records.QUEUED  # intent only; the loop ends it
    assert evs[-1] == (2, "log", {"message": "cancel requested", "reason": "user asked"})


def test_request_cancel_of_a_cancelled_task_is_a_quiet_success(where):
    results = in_store(
        where,
        insert("t1"),
        lambda c: records.finish(c, "t1", records.CANCELLED),
        lambda c: records.request_cancel(c, "t1", None, "again"),
    )
    task, new, rows = results[2]
    assert task.state == records.CANCELLED and not new and rows == []


@pytest.mark.parametrize(("state", "name"), [(records.SUCCEEDED, "SUCCEEDED"), (records.FAILED, "FAILED")])
def test_request_cancel_of_a_finished_task_is_a_failed_precondition(where, state, name):
    results = in_store(
        where,
        insert("t1"),
        lambda c: records.finish(c, "t1", state),
        lambda c: records.request_cancel(c, "t1", "alpha", "too late"),
        lambda c: records.get_task(c, "t1").cancel_requested,
    )
    err = results[2]
    assert isinstance(err, FailedPrecondition)
    assert err.reason == "TASK_FINISHED"
    assert err.details == {"state": name}
    assert results[3] is False


def test_request_cancel_of_another_tenants_task_is_not_found(where):
    results = in_store(where, insert("t1"), lambda c: records.request_cancel(c, "t1", "beta", "x"))
    assert isinstance(results[1], NotFound)


# ---------------------------------------------------------------- inputs and parking


def test_park_refuses_while_an_unconsumed_input_waits(where):
    results = in_store(
        where,
        insert("t1"),
        lambda c: records.set_state(c, "t1", records.RUNNING),
        lambda c: records.add_input(c, "t1", "alpha", '{"approved": true}'),
        lambda c: records.park(c, "t1", None, "ship it?", True, [("log", "{}")]),
        lambda c: (records.get_task(c, "t1"), records.task_progress(c, "t1")),
    )
    assert results[3] is None
    task, progress = results[4]
    assert task.state == records.RUNNING and task.input_prompt == ""
    assert progress == (records.RUNNING, 3)  # nothing appended by the refused park


def test_park_moves_to_waiting_when_no_input_waits(where):
    results = in_store(
        where,
        insert("t1"),
        lambda c: records.set_state(c, "t1", records.RUNNING),
        lambda c: records.park(c, "t1", 1234.5, "ship it?", True, [("input.requested", "{}")]),
        lambda c: (records.get_task(c, "t1"), records.due_wakeups(c, 2000.0, 10)),
    )
    rows = results[2]
    assert [(r.seq, r.kind) for r in rows] == [(3, "input.requested"), (4, "state")]
    task, due = results[3]
    assert task.state == records.WAITING and task.input_prompt == "ship it?"
    assert due == [("t1", "alpha", 0)]


def test_park_for_a_timer_ignores_queued_inputs(where):
    results = in_store(
        where,
        insert("t1"),
        lambda c: records.add_input(c, "t1", "alpha", "1"),
        lambda c: records.park(c, "t1", 99.0, "", False, []),
    )
    assert [r.kind for r in results[2]] == ["state"]


def test_take_input_is_stable_for_the_same_action(where):
    results = in_store(
        where,
        insert("t1"),
        lambda c: records.add_input(c, "t1", "alpha", '"one"'),
        lambda c: records.add_input(c, "t1", "alpha", '"two"'),
        lambda c: records.take_input(c, "t1", "t1/1/0"),
        lambda c: records.take_input(c, "t1", "t1/1/0"),  # a replay after a crash: the same input
        lambda c: records.take_input(c, "t1", "t1/2/0"),
        lambda c: records.take_input(c, "t1", "t1/3/0"),
        lambda c: records.take_input(c, "t1", "t1/1/0"),
    )
    assert results[3:] == ['"one"', '"one"', '"two"', None, '"one"']


def test_add_input_is_refused_for_a_finished_task(where):
    results = in_store(
        where,
        insert("t1"),
        lambda c: records.finish(c, "t1", records.SUCCEEDED),
        lambda c: records.add_input(c, "t1", "alpha", "1"),
    )
    assert isinstance(results[2], FailedPrecondition) and results[2].reason == "TASK_FINISHED"


# ---------------------------------------------------------------- reading tasks


def test_get_task_of_another_tenant_is_not_found(where):
    results = in_store(
        where,
        insert("t1", tenant="alpha"),
        lambda c: records.get_task(c, "t1", "beta"),
        lambda c: records.get_task(c, "missing", "alpha"),
        lambda c: records.get_task(c, "t1", "alpha").id,
        lambda c: records.get_task(c, "t1").id,  # no tenant: the coordinator's own reads
    )
    for err in results[1:3]:
        assert isinstance(err, NotFound) and err.reason == "TASK_NOT_FOUND"
    assert str(results[1]) == str(results[2]).replace("missing", "t1")  # no hint that it exists
    assert results[3:] == ["t1", "t1"]


def test_list_tasks_pages_newest_first_with_a_cursor(where):
    ops = [insert(f"t{i}", tenant="alpha") for i in range(1, 6)]
    ops += [insert(f"t{i}", tenant="beta") for i in range(6, 8)]

    def pages(conn: sqlite3.Connection) -> list[tuple[list[str], str]]:
        out, cursor = [], ""
        for _ in range(10):
            tasks, cursor = records.list_tasks(conn, "alpha", 0, 2, cursor)
            out.append(([t.id for t in tasks], cursor))
            if not cursor:
                return out
        raise AssertionError("the cursor never ran out")

    results = in_store(where, *ops, pages)
    assert results[-1] == [(["t5", "t4"], "t4"), (["t3", "t2"], "t2"), (["t1"], "")]


def test_list_tasks_has_no_cursor_when_the_last_page_is_exactly_full(where):
    ops = [insert(f"t{i}") for i in range(1, 5)]
    results = in_store(
        where,
        *ops,
        lambda c: [([t.id for t in ts], cur) for ts, cur in [records.list_tasks(c, "alpha", 0, 2, "t3")]],
    )
    assert results[-1] == [(["t2", "t1"], "")]


def test_list_tasks_shows_only_the_callers_tenant_and_filters_by_state(where):
    results = in_store(
        where,
        insert("a1", tenant="alpha"),
        insert("a2", tenant="alpha"),
        insert("b1", tenant="beta"),
        lambda c: records.finish(c, "a1", records.SUCCEEDED),
        lambda c: [t.id for t in records.list_tasks(c, "beta", 0, 50, "")[0]],
        lambda c: [t.id for t in records.list_tasks(c, "alpha", records.SUCCEEDED, 50, "")[0]],
        lambda c: [t.id for t in records.list_tasks(c, "alpha", records.QUEUED, 50, "")[0]],
        lambda c: records.list_tasks(c, "nobody", 0, 50, ""),
    )
    assert results[4:] == [["b1"], ["a1"], ["a2"], ([], "")]


def test_task_round_trips_its_fields(where):
    def op(conn: sqlite3.Connection) -> pb.Task:
        task = make_task(
            "t1",
            key="k",
            priority=4,
            budget=pb.Budget(usd=1.5, tokens=100),
            deadline=5000.0,
            labels={"team": "data"},
        )
        records.insert_task(conn, task, "h")
        return records.get_task(conn, "t1")

    (task,) = in_store(where, op)
    assert (task.priority, task.budget.usd, task.budget.tokens, task.deadline) == (4, 1.5, 100, 5000.0)
    assert dict(task.labels) == {"team": "data"}
    assert task.idempotency_key == "k"
    assert task.agent == "pipeline" and task.input_json == '{"steps": []}'
    assert task.created_at == 1000.0
    assert task.cost == pb.Cost()


# ---------------------------------------------------------------- leases (a shared store)


def test_a_task_is_claimed_by_one_coordinator_until_its_lease_lapses(where):
    def op(conn: Any) -> Any:
        records.insert_task(conn, make_task("t1"), "h", lease=("a", 100.0))
        return (
            records.claim(conn, "t1", "b", 150.0, now=50.0),  # a holds it until 100
            records.claim(conn, "t1", "a", 160.0, now=50.0),  # a renews its own
            records.claim(conn, "t1", "b", 200.0, now=170.0),  # lapsed: b takes it over
            records.owner_of(conn, "t1"),
        )

    assert in_store(where, op) == [(False, True, True, "b")]


def test_the_heartbeat_renews_and_tells_what_was_lost_or_cancelled(where):
    def op(conn: Any) -> Any:
        for tid in ("t1", "t2", "t3"):
            records.insert_task(conn, make_task(tid), "h", lease=("a", 100.0))
        records.claim(conn, "t2", "b", 300.0, now=200.0)  # b took t2 over while a stalled
        records.request_cancel(conn, "t3", None, "by b")
        lost, cancelled = records.renew(conn, "a", 500.0, ["t1", "t2", "t3"])
        leases = dict(conn.execute("SELECT id, lease_until FROM tasks").fetchall())
        return lost, cancelled, leases

    assert in_store(where, op) == [(["t2"], ["t3"], {"t1": 500.0, "t2": 300.0, "t3": 500.0})]


def test_lapsed_and_unheld_tasks_are_taken_over_and_waiting_ones_are_not(where):
    def op(conn: Any) -> Any:
        records.insert_task(conn, make_task("held"), "h", lease=("a", 1000.0))
        records.insert_task(conn, make_task("lapsed"), "h", lease=("a", 100.0))
        records.insert_task(conn, make_task("unheld"), "h")
        records.insert_task(conn, make_task("parked"), "h", lease=("a", 100.0))
        records.set_state(conn, "parked", records.RUNNING)
        records.park(conn, "parked", None, "", False, [])  # WAITING: released, claimed when woken
        taken = records.claim_lapsed(conn, "b", 900.0, now=500.0, limit=10)
        owners = dict(conn.execute("SELECT id, owner FROM tasks").fetchall())
        return sorted(t[0] for t in taken), owners

    assert in_store(where, op) == [
        (["lapsed", "unheld"], {"held": "a", "lapsed": "b", "unheld": "b", "parked": None})
    ]


def test_a_fenced_write_lands_only_for_the_holder(where):
    def op(conn: Any) -> Any:
        records.insert_task(conn, make_task("t1"), "h", lease=("a", 100.0))
        mine = records.save_result(conn, "t1", 1, pb.ActionResult(action_id="x"), pb.Cost(), [], fence="a")
        records.claim(conn, "t1", "b", 300.0, now=200.0)  # a stalled; b took the task over
        try:
            records.save_result(conn, "t1", 1, pb.ActionResult(action_id="y"), pb.Cost(), [], fence="a")
        except LeaseLost as exc:
            lost = str(exc)
        else:
            lost = ""
        results = [r[0] for r in conn.execute("SELECT action_id FROM results ORDER BY action_id")]
        return mine, lost, results

    ((mine, lost, results),) = in_store(where, op)
    assert mine == [] and "held by b" in lost and results == ["x"]
