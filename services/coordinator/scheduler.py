"""Which task runs next: priority first, then fairness across tenants, then submission order.

Pure data structure (no I/O). Each tenant has its own heap; `pop()` takes the highest priority among
the tenants' heads, and among equal priorities the tenant with the fewest running tasks, so a tenant
that floods the queue cannot starve the others. Entries are a few small objects per queued task.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field


@dataclass(order=True, slots=True)
class _Entry:
    neg_priority: int
    order: int
    task_id: str = field(compare=False)


class Scheduler:
    def __init__(self) -> None:
        self._heaps: dict[str, list[_Entry]] = {}
        self._tenant_of: dict[str, str] = {}
        self._counter = itertools.count()
        self.running_by_tenant: dict[str, int] = {}
        # Tasks admitted from outside (new submits) count against the queue bound; woken or resumed
        # tasks were already admitted and do not.
        self.admitted_waiting = 0
        self._admitted: set[str] = set()

    def __len__(self) -> int:
        return len(self._tenant_of)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._tenant_of

    def push(self, task_id: str, tenant: str, priority: int, *, admitted: bool = False) -> None:
        if task_id in self._tenant_of:
            return
        self._tenant_of[task_id] = tenant
        heapq.heappush(self._heaps.setdefault(tenant, []), _Entry(-priority, next(self._counter), task_id))
        if admitted:
            self._admitted.add(task_id)
            self.admitted_waiting += 1

    def discard(self, task_id: str) -> None:
        """Forget a queued task (cancelled while queued); its heap entry is skipped lazily."""
        if self._tenant_of.pop(task_id, None) is not None and task_id in self._admitted:
            self._admitted.discard(task_id)
            self.admitted_waiting -= 1

    def pop(self) -> tuple[str, str] | None:
        """(task_id, tenant) of the next task to run, or None when nothing is queued."""
        best_tenant: str | None = None
        best_key: tuple[int, int, int] | None = None
        for tenant, heap in list(self._heaps.items()):
            while heap and heap[0].task_id not in self._tenant_of:
                heapq.heappop(heap)  # discarded entry
            if not heap:
                del self._heaps[tenant]
                continue
            head = heap[0]
            key = (head.neg_priority, self.running_by_tenant.get(tenant, 0), head.order)
            if best_key is None or key < best_key:
                best_key, best_tenant = key, tenant
        if best_tenant is None:
            return None
        entry = heapq.heappop(self._heaps[best_tenant])
        del self._tenant_of[entry.task_id]
        if entry.task_id in self._admitted:
            self._admitted.discard(entry.task_id)
            self.admitted_waiting -= 1
        return entry.task_id, best_tenant

    def started(self, tenant: str) -> None:
        self.running_by_tenant[tenant] = self.running_by_tenant.get(tenant, 0) + 1

    def finished(self, tenant: str) -> None:
        left = self.running_by_tenant.get(tenant, 0) - 1
        if left > 0:
            self.running_by_tenant[tenant] = left
        else:
            self.running_by_tenant.pop(tenant, None)
