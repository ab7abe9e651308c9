"""A task cancelled in the same loop iteration as it was started still ends CANCELLED.

Cancelling an asyncio task before its first step throws into it before any of its handlers run.
The coordinator kills a running task's actions before the cancel intent is durable, so a task that
was just pumped could be cancelled that way and be left in the running set forever. This drives the
real TaskManager and store, with workers whose planner never answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from protos.agentmesh.v1 import common_pb2 as pb
from services.coordinator import records
from services.coordinator.core import Limits, TaskManager
from services.coordinator.pricing import PriceTable
from services.coordinator.store import Store

BOUND_S = 20.0


class SilentPlanner:
    """Accepts every agent; its decisions never come (the task stays RUNNING until cancelled)."""

    async def validate(self, agent: str, input_json: str, timeout: float) -> None:
        return None

    async def decide(self, request: object, timeout: float) -> pb.Decision:
        await asyncio.sleep(BOUND_S * 2)
        raise AssertionError("the test should have ended first")


def test_a_task_cancelled_before_its_loop_starts_ends_cancelled(tmp_path: Path) -> None:
    async def main() -> None:
        store = Store(tmp_path / "store.db")
        await store.start()
        manager = TaskManager(
            store, SilentPlanner(), lambda *_: None, Limits(max_running=4), PriceTable.parse("")
        )
        try:
            await manager.start()
            task = await manager.submit("alpha", "agent", "{}")  # pumped: its loop has not stepped yet
            reply = await manager.cancel(None, task.id)
            assert reply.cancel_requested
            deadline = asyncio.get_running_loop().time() + BOUND_S
            while task.id in manager._running and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            assert task.id not in manager._running
            final = await store.run(lambda c: records.get_task(c, task.id))
            assert final.state == pb.TASK_STATE_CANCELLED
        finally:
            await manager.drain(1.0)
            await store.close()

    asyncio.run(asyncio.wait_for(main(), BOUND_S * 3))
