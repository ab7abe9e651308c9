"""The price table: turns an action's resource use into money."""

from __future__ import annotations

import math
from dataclasses import dataclass

from protos.agentmesh.v1 import common_pb2 as pb
from services.runtime import metrics

# What actions spent, by agent: the same figures as each task's cost, summed over the process.
SPEND_USD = metrics.Counter("agentmesh_spend_usd_total", "money actions spent, by the price table", ["agent"])
SPEND = metrics.Counter(
    "agentmesh_spend_total",
    "resources actions used: tokens_in, tokens_out (count), cpu_ms, gpu_ms, wall_ms (milliseconds)",
    ["agent", "resource"],
)
BUDGET_EXCEEDED = metrics.Counter(
    "agentmesh_budget_exceeded_total", "tasks stopped because their spend passed their budget", ["agent"]
)
RESOURCES = ("tokens_in", "tokens_out", "cpu_ms", "gpu_ms", "wall_ms")

# USD per unit. Every resource is priced above zero so a budget works out of the box; operators
# replace the table with AGENTMESH_PRICES. Rough public figures: a small hosted model's tokens, an
# H100 hour (~$3.6 -> 1e-6 per GPU ms), a CPU core hour (~$0.04 -> 1.1e-8 per CPU ms). Wall time
# is the slot an action holds (its memory, a sandbox, a worker's attention) even while it sleeps or
# waits on the network: priced at a tenth of a core (~$0.004 an hour -> 1.1e-9 per ms).
DEFAULT_PRICES = "tokens_in=2e-7,tokens_out=8e-7,gpu_ms=1e-6,cpu_ms=1.1e-8,wall_ms=1.1e-9"


@dataclass(frozen=True)
class PriceTable:
    tokens_in: float = 0.0
    tokens_out: float = 0.0
    gpu_ms: float = 0.0
    cpu_ms: float = 0.0
    wall_ms: float = 0.0

    @classmethod
    def parse(cls, text: str) -> PriceTable:
        """`name=usd_per_unit,...`; names are the Cost fields."""
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, raw = part.partition("=")
            if not sep or name.strip() not in cls.__dataclass_fields__:
                raise ValueError(
                    f"bad price entry {part!r}; expected one of {sorted(cls.__dataclass_fields__)}=N"
                )
            price = float(raw)
            # NaN or inf would make every spend NaN, and a NaN never exceeds a budget.
            if not math.isfinite(price) or price < 0:
                raise ValueError(f"price for {name} must be a finite number >= 0, not {raw.strip()!r}")
            values[name.strip()] = price
        return cls(**values)

    def usd(self, cost: pb.Cost) -> float:
        return (
            cost.tokens_in * self.tokens_in
            + cost.tokens_out * self.tokens_out
            + cost.gpu_ms * self.gpu_ms
            + cost.cpu_ms * self.cpu_ms
            + cost.wall_ms * self.wall_ms
        )


def count_spend(agent: str, cost: pb.Cost) -> None:
    """One action's cost into the spend metrics."""
    SPEND_USD.labels(agent).inc(cost.usd)
    for resource in RESOURCES:
        amount = getattr(cost, resource)
        if amount:
            SPEND.labels(agent, resource).inc(amount)


def add_cost(total: pb.Cost, part: pb.Cost) -> None:
    total.tokens_in += part.tokens_in
    total.tokens_out += part.tokens_out
    total.gpu_ms += part.gpu_ms
    total.cpu_ms += part.cpu_ms
    total.wall_ms += part.wall_ms
    total.peak_memory_bytes = max(total.peak_memory_bytes, part.peak_memory_bytes)
    total.usd += part.usd
