"""`agentmesh serve coordinator`."""

from __future__ import annotations

import logging
from pathlib import Path

from protos.agentmesh.v1 import agent_service_pb2, agent_service_pb2_grpc, planner_pb2, planner_pb2_grpc
from services.coordinator.access import Access
from services.coordinator.auth import ensure_worker_key, load_keyring
from services.coordinator.backends import backend_for
from services.coordinator.config import CoordinatorConfig
from services.coordinator.core import Limits, TaskManager
from services.coordinator.pricing import PriceTable
from services.coordinator.servicer import AdminServicer, AgentServicer
from services.coordinator.store import Store
from services.coordinator.worker_registry import WorkerRegistryServicer
from services.coordinator.workers import Workers
from services.runtime import config as config_mod
from services.runtime import metrics, server
from services.runtime.mesh_keys import ADMIN_KEY_FILE_NAME, MeshKey, ensure_mesh_key
from services.runtime.server import Runtime, Service

log = logging.getLogger(__name__)

DB_FILE = "agentmesh.db"


class CoordinatorService(Service):
    name = "coordinator"

    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        self.store = Store(
            backend_for(Path(config.data_dir), config.store_url, config.db_synchronous, DB_FILE)
        )
        self.workers: Workers | None = None
        self.manager: TaskManager | None = None
        self.access: Access | None = None

    async def setup(self, rt: Runtime) -> None:
        cfg = self.config
        keys = load_keyring(cfg.api_keys, cfg.api_keys_file, Path(cfg.data_dir))
        await self.store.start()
        # Channels belong to the running loop: made here, not in __init__.
        self.workers = Workers(
            cfg.planner_addr, cfg.executor_addr, cfg.inference_addr, cancel_grace_s=cfg.cancel_grace_s
        )
        limits = Limits(
            max_running=cfg.max_running,
            max_queued=cfg.max_queued,
            max_inflight_exec=cfg.max_inflight_exec,
            max_inflight_infer=cfg.max_inflight_infer,
            tenant_submit_rate=cfg.tenant_submit_rate,
            tenant_submit_burst=cfg.tenant_submit_burst,
            default_action_timeout_s=cfg.default_action_timeout_s,
            decide_timeout_s=cfg.decide_timeout_s,
            cancel_grace_s=cfg.cancel_grace_s,
            max_input_bytes=cfg.max_input_bytes,
            lease_s=cfg.lease_s,
        )
        manager = TaskManager(self.store, self.workers, rt.bus.publish, limits, PriceTable.parse(cfg.prices))
        self.manager = manager
        self.access = access = Access(self.store, keys)
        await access.refresh()  # the keys made with `agentmesh keys create`, before the first call
        agent_service_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(manager, access), rt.server)
        rt.add_service_name(agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name)
        admin_key = MeshKey(
            cfg.admin_key or ensure_mesh_key(Path(cfg.data_dir), ADMIN_KEY_FILE_NAME), "admin"
        )
        agent_service_pb2_grpc.add_AdminServicer_to_server(AdminServicer(access, admin_key), rt.server)
        rt.add_service_name(agent_service_pb2.DESCRIPTOR.services_by_name["Admin"].full_name)
        worker_key = MeshKey(cfg.worker_key or ensure_worker_key(Path(cfg.data_dir)), "worker")
        planner_pb2_grpc.add_AgentWorkersServicer_to_server(
            WorkerRegistryServicer(self.workers.planners, worker_key), rt.server
        )
        rt.add_service_name(planner_pb2.DESCRIPTOR.services_by_name["AgentWorkers"].full_name)
        self._keys = len(keys)

    async def warm(self, rt: Runtime) -> None:
        assert self.manager is not None
        manager = self.manager
        resumed = await manager.start()
        log.info(
            "store %s; %d keys; resumed %d unfinished tasks; %s",
            self.store.path,
            self._keys,
            resumed,
            f"shared, as {manager.owner}" if manager.shared else "not shared",
        )
        rt.spawn(manager.sweep_forever(), "wake-sweeper")
        assert self.access is not None
        rt.spawn(self.access.refresh_forever(), "key-refresher")
        if manager.shared:  # other coordinators use the store too
            rt.spawn(manager.lease_forever(), "lease-heartbeat")
            rt.spawn(manager.follow_cancels(rt.bus.subscriber("cancel.")), "cancel-listener")
        gauges = {
            "agentmesh_tasks_running": ("tasks running now", lambda: len(manager._running)),
            "agentmesh_tasks_queued": ("tasks waiting to start", lambda: len(manager.scheduler)),
            "agentmesh_watchers": ("tasks with live watchers", lambda: manager.hub.watched_tasks),
        }
        for name, (documentation, read) in gauges.items():
            metrics.Gauge(name, documentation).set_function(read)

    async def drain(self) -> None:
        if self.manager is not None:
            await self.manager.drain(self.config.shutdown_grace_s)

    async def close(self) -> None:
        if self.workers is not None:
            await self.workers.close()
        await self.store.close()


def main(argv: list[str]) -> int:
    config = config_mod.load(CoordinatorConfig, argv, prog="agentmesh serve coordinator")
    return server.run(CoordinatorService(config), config, config.listen_addr)
