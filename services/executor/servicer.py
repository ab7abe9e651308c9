"""Executor over gRPC: output chunks as they come, then the result; a cancelled call kills the run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from protos.agentmesh.v1 import common_pb2 as pb
from protos.agentmesh.v1 import executor_pb2, executor_pb2_grpc
from services.executor.core import Executor

_DONE = object()


class ExecutorServicer(executor_pb2_grpc.ExecutorServicer):
    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    async def Exec(
        self, request: executor_pb2.ExecRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[executor_pb2.ExecEvent]:
        if request.action.tool == "echo":  # the fast path: no process, no stream plumbing
            result = await self.executor.run(
                request.task_id,
                request.action_id,
                request.attempt or 1,
                request.action,
                request.timeout_s,
                _ignore,
            )
            yield executor_pb2.ExecEvent(result=result)
            return
        queue: asyncio.Queue[object] = asyncio.Queue()

        def sink(stream: str, data: bytes) -> None:
            queue.put_nowait(
                executor_pb2.ExecEvent(output=executor_pb2.OutputChunk(stream=stream, data=data))
            )

        async def work() -> pb.ActionResult:
            try:
                return await self.executor.run(
                    request.task_id,
                    request.action_id,
                    request.attempt or 1,
                    request.action,
                    request.timeout_s,
                    sink,
                )
            finally:
                queue.put_nowait(_DONE)

        runner = asyncio.ensure_future(work())
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                yield item  # type: ignore[misc]
            yield executor_pb2.ExecEvent(result=await runner)
        finally:
            # The caller went away or cancelled: the run (and its process tree) goes too.
            if not runner.done():
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)

    async def GetCapabilities(
        self, request: executor_pb2.GetCapabilitiesRequest, context: grpc.aio.ServicerContext
    ) -> executor_pb2.Capabilities:
        return executor_pb2.Capabilities(**self.executor.capabilities())


def _ignore(stream: str, data: bytes) -> None:
    return None
