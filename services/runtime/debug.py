"""The Debug service every gRPC service serves (protos/agentmesh/v1/debug.proto): stacks, heap and
a sampling profile of the running process, for `agentmesh debug`.

Only the operator may call it: the mesh's admin key, over loopback. Nothing here costs anything until
it is called; heap tracing, once started, slows the service until `heap --stop`.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
import threading
import time
import traceback
import tracemalloc
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

from protos.agentmesh.v1 import debug_pb2, debug_pb2_grpc
from services.runtime.errors import InvalidArgument, PermissionDenied
from services.runtime.mesh_keys import ADMIN_KEY_FILE_NAME, MeshKey, ensure_mesh_key

MAX_PROFILE_S = 120.0
MAX_TOP = 200
LOOPBACK = ("ipv4:127.", "ipv6:[::1]", "unix:")


def is_local(peer: str) -> bool:
    """Whether a gRPC peer string names this machine's loopback (or a unix socket)."""
    return peer.startswith(LOOPBACK)


def frame_name(frame: FrameType) -> str:
    code = frame.f_code
    return f"{code.co_qualname} ({Path(code.co_filename).name}:{code.co_firstlineno})"


def fold(frame: FrameType | None) -> list[str]:
    """The frames of a stack, outermost first."""
    names = []
    while frame is not None:
        names.append(frame_name(frame))
        frame = frame.f_back
    return names[::-1]


def sample(seconds: float, interval_s: float) -> tuple[collections.Counter[str], int]:
    """Every thread's stack (but this one's) every `interval_s` for `seconds`, folded: a count per
    distinct 'thread;outer;...;inner' line, and how many samples were taken."""
    me = threading.get_ident()
    counts: collections.Counter[str] = collections.Counter()
    samples = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            if ident != me:
                counts[";".join([names.get(ident, str(ident)), *fold(frame)])] += 1
        samples += 1
        time.sleep(interval_s)
    return counts, samples


class DebugServicer(debug_pb2_grpc.DebugServicer):
    def __init__(self, service: str, admin_key: MeshKey) -> None:
        self.service = service
        self.admin_key = admin_key
        self._snapshot: tracemalloc.Snapshot | None = None
        self._snapshot_at = 0.0

    def _check(self, context: grpc.aio.ServicerContext) -> None:
        if not is_local(context.peer()):
            raise PermissionDenied("the Debug service answers only on loopback", reason="NOT_LOCAL")
        authorization = next(
            (v for k, v in context.invocation_metadata() or () if k == "authorization"), None
        )
        self.admin_key.check(authorization)

    async def Stacks(
        self, request: debug_pb2.StacksRequest, context: grpc.aio.ServicerContext
    ) -> debug_pb2.StacksReply:
        self._check(context)
        frames = sys._current_frames()
        threads = [
            debug_pb2.ThreadStack(
                name=t.name,
                ident=t.ident or 0,
                daemon=t.daemon,
                stack="".join(traceback.format_stack(frames[t.ident])) if t.ident in frames else "",
            )
            for t in threading.enumerate()
        ]
        tasks = []
        for task in asyncio.all_tasks():
            coro = task.get_coro()
            stack = "".join(_task_frames(task).format())
            tasks.append(
                debug_pb2.TaskStack(
                    name=task.get_name(), coroutine=getattr(coro, "__qualname__", repr(coro)), stack=stack
                )
            )
        tasks.sort(key=lambda t: t.name)
        return debug_pb2.StacksReply(service=self.service, pid=os.getpid(), threads=threads, tasks=tasks)

    async def Heap(
        self, request: debug_pb2.HeapRequest, context: grpc.aio.ServicerContext
    ) -> debug_pb2.HeapReply:
        self._check(context)
        if not 0 <= request.top <= MAX_TOP:
            raise InvalidArgument(f"top: 0 to {MAX_TOP}", field_violations=[("top", f"0 to {MAX_TOP}")])
        reply = debug_pb2.HeapReply(rss_bytes=_rss_bytes())
        if request.stop:
            tracemalloc.stop()
            self._snapshot = None
            return reply
        if not tracemalloc.is_tracing():
            tracemalloc.start()
            self._snapshot, self._snapshot_at = None, time.monotonic()
            reply.tracing = reply.started_now = True
            return reply
        # Taking and comparing snapshots walks every traced block: off the event loop.
        previous, previous_at = self._snapshot, self._snapshot_at
        snapshot = await asyncio.get_running_loop().run_in_executor(None, tracemalloc.take_snapshot)
        self._snapshot, self._snapshot_at = snapshot, time.monotonic()
        top = request.top or 20
        reply.tracing = True
        reply.traced_bytes, reply.peak_bytes = tracemalloc.get_traced_memory()
        for stat in snapshot.statistics("lineno")[:top]:
            reply.top.append(
                debug_pb2.Allocation(where=_where(stat.traceback), size_bytes=stat.size, count=stat.count)
            )
        if previous is not None:
            reply.since_s = self._snapshot_at - previous_at
            grown = [d for d in snapshot.compare_to(previous, "lineno") if d.size_diff > 0][:top]
            reply.grown.extend(
                debug_pb2.Allocation(
                    where=_where(d.traceback),
                    size_bytes=d.size,
                    count=d.count,
                    size_diff_bytes=d.size_diff,
                    count_diff=d.count_diff,
                )
                for d in grown
            )
        return reply

    async def Profile(
        self, request: debug_pb2.ProfileRequest, context: grpc.aio.ServicerContext
    ) -> debug_pb2.ProfileReply:
        self._check(context)
        seconds = request.seconds or 10.0
        interval = request.interval_s or 0.005
        if not 0 < seconds <= MAX_PROFILE_S or not 0.001 <= interval <= 1.0:
            raise InvalidArgument(
                f"seconds: up to {MAX_PROFILE_S:g}; interval_s: 0.001 to 1",
                field_violations=[("seconds", f"up to {MAX_PROFILE_S:g}"), ("interval_s", "0.001 to 1")],
            )
        # On a thread of its own: the loop (which it samples too) goes on serving meanwhile.
        counts, samples = await asyncio.get_running_loop().run_in_executor(None, sample, seconds, interval)
        stacks = [debug_pb2.FoldedStack(stack=s, count=c) for s, c in counts.most_common()]
        return debug_pb2.ProfileReply(
            stacks=stacks, samples=samples, seconds=seconds, interval_s=interval, pid=os.getpid()
        )


def _task_frames(task: asyncio.Task[Any]) -> traceback.StackSummary:
    return traceback.StackSummary.extract((frame, frame.f_lineno) for frame in task.get_stack())


def _where(tb: tracemalloc.Traceback) -> str:
    frame = tb[0]
    return f"{frame.filename}:{frame.lineno}"


def _rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def add_debug_service(server: grpc.aio.Server, service: str, admin_key: str, data_dir: str) -> str:
    """Serve Debug on `server`; its full name, for reflection and health."""
    key = MeshKey(admin_key or ensure_mesh_key(Path(data_dir), ADMIN_KEY_FILE_NAME), "admin")
    debug_pb2_grpc.add_DebugServicer_to_server(DebugServicer(service, key), server)
    return debug_pb2.DESCRIPTOR.services_by_name["Debug"].full_name
