"""The restart policy of `agentmesh up` (services/runtime/healing.py) on real child processes, with
a clock the test moves: backoff that doubles, a streak forgotten after a stable run, the budget, and
the status file."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from services.runtime.healing import CrashLoop, Healer, RestartPolicy, describe_exit, read_status
from services.runtime.procs import Child, Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sup() -> Supervisor:
    supervisor = Supervisor()
    supervisor.add(Child("worker", SLEEPER, ready=lambda: True))
    supervisor.start(deadline_s=10)
    yield supervisor
    supervisor.stop(grace_s=5)


def kill(child: Child) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.proc.wait(10)  # type: ignore[union-attr]


def test_backoff_doubles_and_is_capped() -> None:
    policy = RestartPolicy(first_delay_s=0.5, max_delay_s=4.0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_dead_service_is_started_again_after_its_backoff(sup: Supervisor, tmp_path: Path) -> None:
    clock, said = Clock(), []
    healer = Healer(sup, RestartPolicy(), tmp_path / "mesh.json", say=said.append, clock=clock)
    child = sup.children[0]
    first = child.pid
    kill(child)
    healer.tick()
    status = read_status(tmp_path)["services"]["worker"]  # type: ignore[index]
    assert status["state"] == "restarting" and status["last_exit"] == "killed by SIGKILL"
    assert "starting it again in 0.5s" in said[-1]
    clock.now += 0.4
    healer.tick()
    assert not child.alive()  # not yet: the backoff has not passed
    clock.now += 0.2
    healer.tick()  # started
    healer.tick()  # and seen ready
    assert child.alive() and child.pid != first
    status = read_status(tmp_path)["services"]["worker"]  # type: ignore[index]
    assert (status["state"], status["restarts"], status["pid"]) == ("running", 1, child.pid)


def test_crashes_in_a_row_wait_longer_until_a_stable_run(sup: Supervisor, tmp_path: Path) -> None:
    clock, said = Clock(), []
    healer = Healer(
        sup, RestartPolicy(budget=10, stable_s=30), tmp_path / "mesh.json", say=said.append, clock=clock
    )
    child = sup.children[0]
    waits = []
    for up_for in (1.0, 1.0, 1.0, 40.0):
        clock.now += up_for
        kill(child)
        healer.tick()
        waits.append(said[-1].split("starting it again in ")[1].split("s")[0])
        clock.now += 60
        healer.tick()
        healer.tick()
    assert waits == ["0.5", "1.0", "2.0", "0.5"]  # the fourth came after 40 s up: a new streak


def test_more_restarts_than_the_budget_is_a_crash_loop(sup: Supervisor, tmp_path: Path) -> None:
    clock = Clock()
    healer = Healer(
        sup, RestartPolicy(budget=2, window_s=60), tmp_path / "mesh.json", say=lambda _: None, clock=clock
    )
    child = sup.children[0]
    for _ in range(2):
        kill(child)
        healer.tick()
        clock.now += 31
        healer.tick()
    kill(child)
    with pytest.raises(CrashLoop, match="worker killed by SIGKILL.*crash loop"):
        healer.tick()
    healer.stopped()
    status = json.loads((tmp_path / "mesh.json").read_text())["services"]["worker"]
    assert status["state"] == "crash-loop" and status["restarts"] == 2


def test_restarts_older_than_the_window_are_forgiven(sup: Supervisor, tmp_path: Path) -> None:
    clock = Clock()
    healer = Healer(
        sup, RestartPolicy(budget=1, window_s=60), tmp_path / "mesh.json", say=lambda _: None, clock=clock
    )
    child = sup.children[0]
    for _ in range(3):  # one restart a window: never more than the budget at once
        clock.now += 61
        kill(child)
        healer.tick()
        clock.now += 1
        healer.tick()
    assert child.alive() and healer.status["worker"].restarts == 3


def test_exits_are_described_for_people() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(3) == "exited with 3"
    assert describe_exit(0) == "exited with 0"
