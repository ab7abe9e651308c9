"""Executor over gRPC: one session stream per caller; output chunks as they come, then each result;
a cancelled action, or a broken session, kills the runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from protos.agentmesh.v1 import common_pb2 as pb
from protos.agentmesh.v1 import executor_pb2, executor_pb2_grpc
from services.executor.core import Executor
from services.runtime.errors import AgentMeshError

log = logging.getLogger(__name__)


class ExecutorServicer(executor_pb2_grpc.ExecutorServicer):
    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    def _run(self, request: executor_pb2.ExecRequest, sink: Any, spent: pb.Cost | None = None) -> Any:
        """The one way every RPC here starts an action."""
        return self.executor.run(
            request.task_id,
            request.action_id,
            request.attempt or 1,
            request.action,
            request.timeout_s,
            sink,
            only_if_known=request.only_if_known,
            spent=spent,
        )

    async def Session(
        self, requests: AsyncIterator[executor_pb2.SessionRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[executor_pb2.SessionEvent]:
        """Run the actions a caller streams in; their output and results stream back, tagged with the
        action. The caller going away ends the session, and with it every action it started."""
        events: asyncio.Queue[executor_pb2.SessionEvent | None] = asyncio.Queue()
        runs: dict[tuple[str, int], asyncio.Task[None]] = {}

        async def run_one(request: executor_pb2.ExecRequest, attempt: int) -> None:
            def sink(stream: str, data: bytes) -> None:
                events.put_nowait(
                    executor_pb2.SessionEvent(
                        action_id=request.action_id,
                        attempt=attempt,
                        output=executor_pb2.OutputChunk(stream=stream, data=data),
                    )
                )

            spent = pb.Cost()
            try:
                result = await self._run(request, sink, spent)
            except AgentMeshError as exc:
                result = pb.ActionResult(
                    action_id=request.action_id,
                    status=pb.ACTION_STATUS_FAILED,
                    error=pb.TaskError(reason=exc.reason, message=exc.message),
                )
            except asyncio.CancelledError:
                reason = "EXECUTOR_SHUTDOWN" if self.executor.draining else "CANCELLED"
                result = pb.ActionResult(
                    action_id=request.action_id,
                    status=pb.ACTION_STATUS_FAILED if self.executor.draining else pb.ACTION_STATUS_CANCELLED,
                    error=pb.TaskError(
                        reason=reason,
                        message="cancelled"
                        if reason == "CANCELLED"
                        else "the executor is shutting down; run it again elsewhere",
                    ),
                    cost=spent,  # what it used before it was stopped: the coordinator charges it
                )
            except Exception as exc:  # noqa: BLE001 - every action gets a result, whatever broke
                log.exception("action %s failed inside the executor", request.action_id)
                result = pb.ActionResult(
                    action_id=request.action_id,
                    status=pb.ACTION_STATUS_FAILED,
                    error=pb.TaskError(reason="EXECUTOR_ERROR", message=f"executor error: {exc!r}"),
                )
            finally:
                runs.pop((request.action_id, attempt), None)
            events.put_nowait(
                executor_pb2.SessionEvent(action_id=request.action_id, attempt=attempt, result=result)
            )

        async def read_requests() -> None:
            async for request in requests:
                if request.HasField("exec"):
                    attempt = request.exec.attempt or 1
                    key = (request.exec.action_id, attempt)
                    if key not in runs:
                        # echo does nothing a retry could repeat; a known-only request starts nothing
                        if request.exec.action.tool != "echo" and not request.exec.only_if_known:
                            events.put_nowait(
                                executor_pb2.SessionEvent(
                                    action_id=key[0], attempt=attempt, accepted=executor_pb2.ActionAccepted()
                                )
                            )
                        runs[key] = asyncio.ensure_future(run_one(request.exec, attempt))
                elif request.HasField("cancel"):
                    run = runs.get((request.cancel.action_id, request.cancel.attempt or 1))
                    if run is not None and not run.cancelling():  # the bus's cancel may have come first
                        run.cancel()
            # The caller closed its side: finish what runs, then end the stream.
            while runs:
                await asyncio.gather(*list(runs.values()), return_exceptions=True)
            events.put_nowait(None)

        reader = asyncio.ensure_future(read_requests())
        # A broken request stream ends the session too (the finally below kills what it started).
        reader.add_done_callback(
            lambda t: None if t.cancelled() or not t.exception() else events.put_nowait(None)
        )
        try:
            while True:
                event = await events.get()
                if event is None:
                    error = reader.exception() if reader.done() and not reader.cancelled() else None
                    if isinstance(error, AgentMeshError):  # a malformed request: say so, not OK
                        raise error
                    return
                yield event
        finally:
            reader.cancel()
            live = list(runs.values())
            for run in live:
                run.cancel()
            await asyncio.gather(reader, *live, return_exceptions=True)

    async def GetCapabilities(
        self, request: executor_pb2.GetCapabilitiesRequest, context: grpc.aio.ServicerContext
    ) -> executor_pb2.Capabilities:
        return executor_pb2.Capabilities(**self.executor.capabilities())
