"""`agentmesh serve executor`."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from protos.agentmesh.v1 import bus_pb2, executor_pb2, executor_pb2_grpc
from services.executor.core import Executor, ExecutorLimits
from services.executor.sandbox import SandboxConfig
from services.executor.servicer import ExecutorServicer
from services.runtime import config as config_mod
from services.runtime import server
from services.runtime.config import CommonConfig, setting
from services.runtime.server import Runtime, Service

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecutorConfig(CommonConfig):
    listen: str = setting("", "address to listen on (default: executor_addr)")
    max_output_bytes: int = setting(1 << 20, "stdout+stderr kept per action; the rest is dropped (truncated)")
    max_artifact_bytes: int = setting(1 << 20, "largest output file returned as an artifact")
    workspace_root: str = setting("", "where action workspaces are made (default: the temp dir)")
    action_python: str = setting(
        "", "interpreter for python/pytest/scan tools (default: .venv-actions from setup-env, else this one)"
    )
    isolation_policy: str = setting(
        "strict",
        "strict: refuse an action whose isolation this host cannot give; permissive: run it anyway",
    )
    bwrap: str = setting("", "bubblewrap binary ('' finds it on PATH; 'off': no namespaces, no fs isolation)")
    sandbox_uid: int = setting(65534, "uid actions run as when the executor runs as root")
    sandbox_gid: int = setting(65534, "gid actions run as when the executor runs as root")
    sandbox_tmp_bytes: int = setting(64 << 20, "size of the sandbox's private /tmp")
    shared_dir: str = setting(
        "", "host dir bound read-write at /shared in every sandbox ($AGENTMESH_SHARED_DIR); off: ''"
    )
    action_memory_bytes: int = setting(1 << 30, "memory of one action, all its processes (cgroup)")
    action_pids: int = setting(256, "processes and threads of one action (cgroup pids.max)")
    action_cpu_millicores: int = setting(1000, "CPU quota of one action, thousandths of a core (cgroup)")
    workspace_bytes: int = setting(256 << 20, "size of an action's workspace (tmpfs)")
    instance: str = setting("", "name of this executor's cgroup subtree (default: from the listen address)")
    max_file_bytes: int = setting(64 << 20, "largest file an action may write (RLIMIT_FSIZE)")
    max_open_files: int = setting(1024, "open files per action process (RLIMIT_NOFILE)")
    max_address_space: int = setting(8 << 30, "address space per action process (RLIMIT_AS)")
    warm_sandboxes: int = setting(
        2, "full-isolation sandboxes kept started ahead of their actions, to take start-up off them (0: none)"
    )


class ExecutorService(Service):
    name = "executor"
    event_loop = "asyncio"  # see Service.event_loop: every action is a process start

    def __init__(self, config: ExecutorConfig, listen: str) -> None:
        self.config = config
        self.listen = listen
        self.executor: Executor | None = None

    async def setup(self, rt: Runtime) -> None:
        cfg = self.config
        limits = ExecutorLimits(
            max_output_bytes=cfg.max_output_bytes,
            max_artifact_bytes=cfg.max_artifact_bytes,
            workspace_root=cfg.workspace_root,
            python=cfg.action_python,
            isolation_policy=cfg.isolation_policy,
            sandbox=SandboxConfig(
                bwrap=cfg.bwrap,
                uid=cfg.sandbox_uid,
                gid=cfg.sandbox_gid,
                tmp_bytes=cfg.sandbox_tmp_bytes,
                shared_dir=cfg.shared_dir,
            ),
            memory_bytes=cfg.action_memory_bytes,
            pids=cfg.action_pids,
            cpu_millicores=cfg.action_cpu_millicores,
            workspace_bytes=cfg.workspace_bytes,
            max_file_bytes=cfg.max_file_bytes,
            max_open_files=cfg.max_open_files,
            max_address_space=cfg.max_address_space,
            warm_sandboxes=cfg.warm_sandboxes,
        )
        executor = Executor(limits, cfg.instance or "exec-" + self.listen.rsplit(":", 1)[-1])
        self.executor = executor
        executor_pb2_grpc.add_ExecutorServicer_to_server(ExecutorServicer(executor), rt.server)
        rt.add_service_name(executor_pb2.DESCRIPTOR.services_by_name["Executor"].full_name)
        caps = executor.capabilities()
        log.info("executor capabilities: %s", {k: v for k, v in caps.items() if k != "tool_specs"})
        rt.spawn(self._follow_cancels(rt), "cancel-listener")
        rt.spawn(self._reap_forever(), "orphan-reaper")

    async def _follow_cancels(self, rt: Runtime) -> None:
        sub = rt.bus.subscriber("cancel.")
        assert self.executor is not None
        while True:
            try:
                _, payload = await sub.recv()
                notice = bus_pb2.CancelNotice.FromString(payload)
                if self.executor.cancel_task(notice.task_id):
                    log.info("cancelled actions of task %s (bus)", notice.task_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bad message must not stop cancellation
                log.exception("bad cancel notice")

    async def _reap_forever(self) -> None:
        assert self.executor is not None
        while True:
            await asyncio.sleep(1.0)
            self.executor.reap_orphans()

    async def close(self) -> None:
        if self.executor is not None:
            self.executor.close()

    async def drain(self) -> None:
        # In-flight actions are handed back: the coordinator re-dispatches them after it resumes.
        if self.executor is not None:
            self.executor.cancel_all()


def main(argv: list[str]) -> int:
    config = config_mod.load(ExecutorConfig, argv, prog="agentmesh serve executor")
    listen = config.listen or config.executor_addr
    return server.run(ExecutorService(config, listen), config, listen)
