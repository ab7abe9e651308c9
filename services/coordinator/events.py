"""Watchers: every event of a task exactly once, in order, whatever the bus drops.

A watcher reads the store from `after_seq`, then follows live events (handed over in-process by the
coordinator after each commit, and from the bus for tasks another coordinator runs), drops what it
has seen by seq, and goes back to the store on any gap or after `poll_s` of silence. The store is
the truth; live delivery only makes it fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from protos.agentmesh.v1 import common_pb2 as pb
from services.coordinator.store import EventRow

log = logging.getLogger(__name__)

# How many live events a slow watcher may fall behind before it is sent back to the store.
WATCHER_QUEUE_LIMIT = 4096
STORE_PAGE = 500

ReadEvents = Callable[[str, int, int], Awaitable[tuple[list[EventRow], tuple[int, int] | None]]]


def row_to_event(row: EventRow) -> pb.Event:
    return pb.Event(task_id=row.task_id, seq=row.seq, ts=row.ts, kind=row.kind, data_json=row.data)


def is_terminal_event(event: pb.Event) -> bool:
    return event.kind == "state" and json.loads(event.data_json).get("terminal", False)


class _Watcher:
    __slots__ = ("queue", "overflowed")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[pb.Event] = asyncio.Queue()
        self.overflowed = False

    def push(self, event: pb.Event) -> None:
        if self.queue.qsize() >= WATCHER_QUEUE_LIMIT:
            self.overflowed = True  # the consumer refills from the store
            return
        self.queue.put_nowait(event)


class EventHub:
    def __init__(
        self,
        read_events: ReadEvents,
        poll_s: float = 1.0,
        on_first_watcher: Callable[[str], None] | None = None,
        on_last_watcher: Callable[[str], None] | None = None,
    ) -> None:
        self._read_events = read_events
        self._watchers: dict[str, set[_Watcher]] = {}
        self.poll_s = poll_s
        self._on_first = on_first_watcher
        self._on_last = on_last_watcher

    @property
    def watched_tasks(self) -> int:
        return len(self._watchers)

    def deliver(self, event: pb.Event) -> None:
        watchers = self._watchers.get(event.task_id)
        if watchers:
            for watcher in watchers:
                watcher.push(event)

    def _register(self, task_id: str) -> _Watcher:
        watcher = _Watcher()
        group = self._watchers.setdefault(task_id, set())
        if not group and self._on_first:
            self._on_first(task_id)
        group.add(watcher)
        return watcher

    def _unregister(self, task_id: str, watcher: _Watcher) -> None:
        group = self._watchers.get(task_id)
        if group is None:
            return
        group.discard(watcher)
        if not group:
            del self._watchers[task_id]
            if self._on_last:
                self._on_last(task_id)

    async def watch(
        self, task_id: str, after_seq: int, terminal_states: frozenset[int]
    ) -> AsyncIterator[pb.Event]:
        watcher = self._register(task_id)  # before the first store read, so nothing falls in between
        last = after_seq
        try:
            while True:
                rows, progress = await self._read_events(task_id, last, STORE_PAGE)
                for row in rows:
                    last = row.seq
                    yield row_to_event(row)
                if progress is None:
                    return
                state, last_seq = progress
                if last < last_seq:
                    continue  # more pages in the store
                if state in terminal_states:
                    return
                watcher.overflowed = False
                while True:
                    try:
                        event = await asyncio.wait_for(watcher.queue.get(), self.poll_s)
                    except TimeoutError:
                        break  # silence: ask the store (covers a lost live event)
                    if event.seq <= last:
                        continue
                    if event.seq != last + 1 or watcher.overflowed:
                        break  # a gap: the store has what we missed
                    last = event.seq
                    yield event
                    if is_terminal_event(event):
                        return
                # drain what is queued; the store read covers it
                while not watcher.queue.empty():
                    watcher.queue.get_nowait()
        finally:
            with contextlib.suppress(Exception):
                self._unregister(task_id, watcher)
