"""The coordinator's configuration."""

from __future__ import annotations

from dataclasses import dataclass

from services.coordinator.pricing import DEFAULT_PRICES
from services.runtime.config import CommonConfig, setting


@dataclass(frozen=True)
class CoordinatorConfig(CommonConfig):
    listen: str = setting("", "address to listen on (default: coordinator_addr)")
    max_running: int = setting(256, "tasks that run at once (WAITING tasks do not count)")
    max_queued: int = setting(10_000, "submitted tasks waiting to start; beyond it SubmitTask is refused")
    max_inflight_exec: int = setting(64, "exec actions in flight at once")
    max_inflight_infer: int = setting(64, "infer/embed actions in flight at once")
    tenant_submit_rate: float = setting(0.0, "submits per second per tenant (0: unlimited)")
    tenant_submit_burst: float = setting(100.0, "burst of the per-tenant submit rate")
    default_action_timeout_s: float = setting(600.0, "timeout of an action that sets none")
    decide_timeout_s: float = setting(30.0, "timeout of one planner call")
    cancel_grace_s: float = setting(2.0, "time in-flight actions get to acknowledge a cancel")
    db_synchronous: str = setting("FULL", "SQLite synchronous mode: FULL (fsync per commit) or NORMAL")
    store_url: str = setting(
        "", "postgresql://user@host:port/db to keep tasks in PostgreSQL (default: SQLite in data_dir)"
    )
    api_keys: str = setting("", "tenant=key,tenant2=key2 (else api_keys_file, else a generated default key)")
    api_keys_file: str = setting("", "file of `tenant:sha256(key)` lines")
    worker_key: str = setting(
        "", "key agent workers register with (default: DATA_DIR/worker.key, made if missing)"
    )
    prices: str = setting(DEFAULT_PRICES, "USD per unit: tokens_in, tokens_out, gpu_ms, cpu_ms, wall_ms")
    max_input_bytes: int = setting(1 << 20, "largest task input or SendInput data accepted")
    lease_s: float = setting(
        10.0, "PostgreSQL store shared by coordinators: how long a claim on a task holds without a heartbeat"
    )

    @property
    def listen_addr(self) -> str:
        return self.listen or self.coordinator_addr
