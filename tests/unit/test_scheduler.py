"""The coordinator's run queue: priority, FIFO, tenant fairness, discard, admission count, token bucket."""

from __future__ import annotations

import pytest

from services.coordinator.scheduler import Scheduler
from services.runtime.ratelimit import TokenBucket


def drain(sched: Scheduler) -> list[str]:
    order = []
    for _ in range(1000):  # bounded: a queue that never empties is a failure, not a hang
        picked = sched.pop()
        if picked is None:
            return order
        order.append(picked[0])
    raise AssertionError("the scheduler never ran dry")


# ---------------------------------------------------------------- order


def test_empty_scheduler_pops_none():
    sched = Scheduler()
    assert sched.pop() is None
    assert len(sched) == 0


def test_higher_priority_goes_first():
    sched = Scheduler()
    sched.push("low", "t", 0)
    sched.push("high", "t", 10)
    sched.push("mid", "t", 5)
    sched.push("negative", "t", -3)
    assert drain(sched) == ["high", "mid", "low", "negative"]


def test_higher_priority_goes_first_across_tenants():
    sched = Scheduler()
    sched.push("a-low", "a", 0)
    sched.push("b-high", "b", 7)
    assert sched.pop() == ("b-high", "b")
    assert sched.pop() == ("a-low", "a")


def test_fifo_within_a_priority():
    sched = Scheduler()
    ids = [f"t{i}" for i in range(20)]
    for task_id in ids:
        sched.push(task_id, "t", 3)
    assert drain(sched) == ids


def test_fifo_across_tenants_when_running_counts_are_equal():
    sched = Scheduler()
    sched.push("a1", "a", 0)
    sched.push("b1", "b", 0)
    sched.push("a2", "a", 0)
    sched.push("b2", "b", 0)
    assert drain(sched) == ["a1", "b1", "a2", "b2"]


def test_pop_reports_the_tenant():
    sched = Scheduler()
    sched.push("x", "alpha", 1)
    assert sched.pop() == ("x", "alpha")
    assert "x" not in sched


def test_pushing_a_queued_id_twice_is_a_no_op():
    sched = Scheduler()
    sched.push("x", "t", 0)
    sched.push("x", "t", 99)
    assert len(sched) == 1
    assert drain(sched) == ["x"]


# ---------------------------------------------------------------- fairness


def test_tenant_running_fewer_tasks_goes_first_at_equal_priority():
    sched = Scheduler()
    for i in range(50):  # tenant a floods the queue first
        sched.push(f"a{i}", "a", 0)
    sched.push("b0", "b", 0)
    for _ in range(3):
        sched.started("a")
    assert sched.running_by_tenant == {"a": 3}
    assert sched.pop() == ("b0", "b")  # b runs 0, a runs 3: b's head wins despite being queued last


def test_flooding_tenant_does_not_starve_another_as_tasks_start():
    sched = Scheduler()
    for i in range(30):
        sched.push(f"a{i}", "a", 0)
    for i in range(3):
        sched.push(f"b{i}", "b", 0)
    order = []
    for _ in range(6):  # nothing finishes: each start raises that tenant's running count
        task_id, tenant = sched.pop()  # type: ignore[misc]
        sched.started(tenant)
        order.append(task_id)
    # a1 (oldest) first, then b gets its turn whenever it runs fewer: the tenants alternate.
    assert order == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_priority_beats_fairness():
    sched = Scheduler()
    sched.push("a-urgent", "a", 5)
    sched.push("b-normal", "b", 0)
    for _ in range(10):
        sched.started("a")
    assert sched.pop() == ("a-urgent", "a")


def test_finished_lowers_the_running_count_and_forgets_idle_tenants():
    sched = Scheduler()
    sched.started("a")
    sched.started("a")
    sched.finished("a")
    assert sched.running_by_tenant == {"a": 1}
    sched.finished("a")
    assert sched.running_by_tenant == {}
    sched.finished("never-started")  # harmless
    assert sched.running_by_tenant == {}


def test_after_finishing_the_busy_tenant_competes_by_age_again():
    sched = Scheduler()
    sched.push("a0", "a", 0)
    sched.push("b0", "b", 0)
    sched.started("a")
    sched.finished("a")
    assert sched.pop() == ("a0", "a")


# ---------------------------------------------------------------- discard


def test_discard_removes_a_queued_task():
    sched = Scheduler()
    sched.push("x", "t", 0)
    sched.push("y", "t", 0)
    sched.push("z", "u", 0)
    sched.discard("y")
    assert "y" not in sched
    assert len(sched) == 2
    assert drain(sched) == ["x", "z"]


def test_discard_of_the_only_task_of_a_tenant():
    sched = Scheduler()
    sched.push("x", "t", 9)
    sched.push("y", "u", 0)
    sched.discard("x")
    assert drain(sched) == ["y"]
    assert sched.pop() is None


def test_discard_of_an_unknown_or_popped_id_is_harmless():
    sched = Scheduler()
    sched.discard("nothing")
    sched.push("x", "t", 0, admitted=True)
    assert sched.pop() == ("x", "t")
    sched.discard("x")
    sched.discard("x")
    assert sched.admitted_waiting == 0
    assert len(sched) == 0


def test_a_discarded_task_can_be_queued_again():
    sched = Scheduler()
    sched.push("x", "t", 0)
    sched.discard("x")
    sched.push("x", "t", 0)
    assert drain(sched) == ["x"]


# ---------------------------------------------------------------- admitted_waiting


def test_admitted_waiting_counts_only_admitted_pushes():
    sched = Scheduler()
    sched.push("new1", "t", 0, admitted=True)
    sched.push("new2", "t", 0, admitted=True)
    sched.push("woken", "t", 0)
    sched.push("resumed", "u", 0, admitted=False)
    assert sched.admitted_waiting == 2
    assert len(sched) == 4


def test_admitted_waiting_falls_on_pop_of_an_admitted_task_only():
    sched = Scheduler()
    sched.push("woken", "t", 5)
    sched.push("new", "t", 0, admitted=True)
    assert sched.pop() == ("woken", "t")
    assert sched.admitted_waiting == 1
    assert sched.pop() == ("new", "t")
    assert sched.admitted_waiting == 0


def test_admitted_waiting_falls_on_discard_of_an_admitted_task_only():
    sched = Scheduler()
    sched.push("new", "t", 0, admitted=True)
    sched.push("woken", "t", 0)
    sched.discard("woken")
    assert sched.admitted_waiting == 1
    sched.discard("new")
    assert sched.admitted_waiting == 0
    sched.discard("new")
    assert sched.admitted_waiting == 0


def test_repeated_admitted_push_counts_once():
    sched = Scheduler()
    sched.push("new", "t", 0, admitted=True)
    sched.push("new", "t", 0, admitted=True)
    assert sched.admitted_waiting == 1
    drain(sched)
    assert sched.admitted_waiting == 0


# ---------------------------------------------------------------- TokenBucket


def test_bucket_allows_a_burst_then_says_how_long_to_wait():
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)  # one token at 2/s
    assert bucket.take(100.0) == pytest.approx(0.5)  # a refusal takes nothing


def test_bucket_refills_at_its_rate():
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    for _ in range(3):
        assert bucket.take(0.0) == 0.0
    assert bucket.take(0.25) == pytest.approx(0.25)  # half a token back; half a token short
    assert bucket.take(0.5) == 0.0  # a whole token back by now
    assert bucket.take(0.5) == pytest.approx(0.5)


def test_bucket_never_holds_more_than_its_burst():
    bucket = TokenBucket(rate=10.0, burst=2, now=0.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(1000.0) == 0.0
    assert bucket.take(1000.0) == 0.0
    assert bucket.take(1000.0) == pytest.approx(0.1)
    assert bucket.tokens <= bucket.burst


def test_bucket_takes_amounts_larger_than_one():
    bucket = TokenBucket(rate=1.0, burst=5, now=0.0)
    assert bucket.take(0.0, amount=4) == 0.0
    assert bucket.take(0.0, amount=3) == pytest.approx(2.0)
    assert bucket.take(2.0, amount=3) == 0.0


def test_bucket_burst_is_at_least_one():
    bucket = TokenBucket(rate=1.0, burst=0, now=0.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(1.0)


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_bucket_rate_zero_or_less_is_unlimited(rate):
    bucket = TokenBucket(rate=rate, burst=1, now=0.0)
    assert all(bucket.take(0.0) == 0.0 for _ in range(10_000))
    assert bucket.take(0.0, amount=1e9) == 0.0
