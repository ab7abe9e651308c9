"""The coordinator's gRPC clients for the stateless workers (planner, executor, inference).

The task loop in core.py talks to this class only; it never sees a channel or a status code.
Worker errors come back as `AgentMeshError`s. Cancelling the awaiting coroutine cancels the RPC,
which is how a cancelled task stops its in-flight actions at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from protos.agentmesh.v1 import agent_service_pb2 as api
from protos.agentmesh.v1 import common_pb2 as pb
from protos.agentmesh.v1 import (
    executor_pb2,
    executor_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    planner_pb2,
)
from services.coordinator.planners import PlannerPool
from services.runtime.channels import insecure_channel
from services.runtime.errors import DeadlineExceeded, Unavailable, from_rpc_error

OutputSink = Callable[[str, bytes], None]
log = logging.getLogger(__name__)

# A tool catalogue this old is fetched again (an executor may be replaced by one with other tools).
CATALOGUE_REFRESH_S = 30.0
# After a failed fetch, the next one waits this long: an executor that is down is not asked per action.
CATALOGUE_RETRY_S = 1.0
CATALOGUE_TIMEOUT_S = 2.0
# Streamed tokens are coalesced into one output event per this many seconds.
TOKEN_FLUSH_S = 0.05
# How long a cancelled exec action waits for the executor to report what the action used. The
# executor answers once the action's tree is dead (milliseconds with a cgroup).
CANCEL_REPORT_S = 1.0


# How long a submit waits for an unreachable planner before it answers UNAVAILABLE.
VALIDATE_WAIT_S = 10.0


class Workers:
    def __init__(
        self, planner_addr: str, executor_addr: str, inference_addr: str, cancel_grace_s: float = 2.0
    ) -> None:
        self._channels = [insecure_channel(a) for a in (executor_addr, inference_addr)]
        # Which worker runs each kind of action (a task's timeline names it).
        self.addresses = {"exec": executor_addr, "infer": inference_addr, "embed": inference_addr}
        # The mesh's planner and the agent workers that registered (planners.py routes between them).
        self.planners = PlannerPool(planner_addr)
        self.executor = executor_pb2_grpc.ExecutorStub(self._channels[0])
        self.inference = inference_pb2_grpc.InferenceStub(self._channels[1])
        self.tools = ToolCatalogue(self.executor)
        # A new session may be a new executor, with other tools: read its catalogue again.
        # A cancelled action's report is waited for within half the cancel grace (the task's end
        # waits that grace for its actions, and then for their results to be written).
        self.exec_session = ExecSession(
            self.executor,
            on_open=self.tools.mark_stale,
            report_wait_s=min(CANCEL_REPORT_S, cancel_grace_s / 2),
        )

    async def close(self) -> None:
        await self.exec_session.close()
        await self.planners.close()
        for channel in self._channels:
            await channel.close(grace=None)

    async def decide(self, request: planner_pb2.DecideRequest, timeout: float) -> pb.Decision:
        return await self.planners.decide(request, timeout)

    async def validate(self, agent: str, input_json: str, timeout: float) -> str:
        """The agent version the new task is pinned to, once its input checked out."""
        return await self.planners.validate(agent, input_json, min(timeout, VALIDATE_WAIT_S))

    async def newest(self, agent: str) -> str:
        return await self.planners.newest(agent)

    async def list_agents(self) -> list[api.AgentInfo]:
        return await self.planners.list_agents()

    async def list_models(self) -> list[inference_pb2.ModelInfo]:
        try:
            reply = await self.inference.ListModels(inference_pb2.ListModelsRequest(), timeout=10)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return list(reply.models)

    async def run_exec(
        self,
        task_id: str,
        action: pb.Action,
        timeout: float,
        on_output: OutputSink,
        attempt: int = 1,
        only_if_known: bool = False,
        spent: pb.Cost | None = None,
    ) -> pb.ActionResult:
        """The action's result. If this is cancelled, `spent` is filled with what the action used
        until the executor stopped it."""
        request = executor_pb2.ExecRequest(
            task_id=task_id,
            action_id=action.id,
            action=action.exec,
            timeout_s=timeout,
            attempt=attempt,
            only_if_known=only_if_known,
        )
        # A margin over the executor's own wall limit: it reports TIMED_OUT itself, with the output.
        return await self.exec_session.run(request, on_output, timeout + 10.0, spent)

    async def run_infer(
        self,
        task_id: str,
        action: pb.Action,
        timeout: float,
        on_output: OutputSink,
        spent: pb.Cost | None = None,
    ) -> pb.ActionResult:
        """The generation's result. If this is cancelled, `spent` is filled with the usage the
        worker reported with the last tokens it sent."""
        started = time.monotonic()
        request = inference_pb2.GenerateRequest(task_id=task_id, action_id=action.id, params=action.infer)
        call = self.inference.Generate(request, timeout=timeout)
        last_usage = inference_pb2.Usage()
        pieces: list[str] = []
        unsent: list[str] = []
        sent_at = time.monotonic()
        try:
            async for event in call:
                if event.HasField("usage"):
                    last_usage = event.usage
                if event.text:
                    pieces.append(event.text)
                    unsent.append(event.text)
                    # Tokens go out as events at most every TOKEN_FLUSH_S: a durable event per token
                    # would cost a row per token for nothing a reader can see.
                    if time.monotonic() - sent_at >= TOKEN_FLUSH_S:
                        on_output("tokens", "".join(unsent).encode())
                        unsent.clear()
                        sent_at = time.monotonic()
                if event.final:
                    if unsent:
                        on_output("tokens", "".join(unsent).encode())
                    if event.finish_reason == "cancelled":
                        # The worker dropped it (the task's cancel reached it over the bus first).
                        return pb.ActionResult(
                            action_id=action.id,
                            key=action.key,
                            status=pb.ACTION_STATUS_CANCELLED,
                            error=pb.TaskError(reason="CANCELLED", message="the generation was cancelled"),
                            cost=_inference_cost(event.usage, started),
                        )
                    return pb.ActionResult(
                        action_id=action.id,
                        key=action.key,
                        status=pb.ACTION_STATUS_OK,
                        output_json=json.dumps(
                            {"text": "".join(pieces), "finish_reason": event.finish_reason}
                        ),
                        cost=_inference_cost(event.usage, started),
                    )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        except asyncio.CancelledError:
            if spent is not None:
                spent.CopyFrom(_inference_cost(last_usage, started))
            raise
        finally:
            call.cancel()
        raise Unavailable("inference ended the stream without a final event", reason="WORKER_PROTOCOL")

    async def run_embed(self, task_id: str, action: pb.Action, timeout: float) -> pb.ActionResult:
        started = time.monotonic()
        request = inference_pb2.EmbedRequest(task_id=task_id, action_id=action.id, params=action.embed)
        try:
            reply = await self.inference.Embed(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return pb.ActionResult(
            action_id=action.id,
            key=action.key,
            status=pb.ACTION_STATUS_OK,
            output_json=json.dumps({"vectors": [list(v.values) for v in reply.vectors]}),
            cost=_inference_cost(reply.usage, started),
        )


def _inference_cost(usage: inference_pb2.Usage, started: float) -> pb.Cost:
    """An inference call's cost: its tokens, and its engine time as GPU or CPU time."""
    return pb.Cost(
        tokens_in=usage.prompt_tokens,
        tokens_out=usage.completion_tokens,
        gpu_ms=usage.gpu_ms,
        cpu_ms=usage.engine_ms if not usage.gpu_ms else 0.0,
        wall_ms=(time.monotonic() - started) * 1000,
    )


class ExecSession:
    """Every exec action of this coordinator over one long-lived `Executor.Session` stream.

    A message per action instead of a call per action (a unary gRPC call costs several times a
    message on an open stream). Cancelling a waiting `run()` sends a cancel for that action; if the
    stream breaks, every waiting action fails (the executor kills what the stream started) and the
    next `run()` opens a new stream. An action the executor had accepted fails EXECUTOR_SESSION_LOST
    (it may have done part of its work); one it never acknowledged fails UNAVAILABLE (it never ran).
    """

    def __init__(
        self,
        stub: executor_pb2_grpc.ExecutorStub,
        on_open: Callable[[], None] | None = None,
        report_wait_s: float = CANCEL_REPORT_S,
    ) -> None:
        self._stub = stub
        self.report_wait_s = report_wait_s
        self._on_open = on_open
        self._outbox: asyncio.Queue[executor_pb2.SessionRequest | None] | None = None
        self._pending: dict[tuple[str, int], tuple[asyncio.Future[pb.ActionResult], OutputSink]] = {}
        self._accepted: set[tuple[str, int]] = set()
        self._late: dict[tuple[str, int], pb.ActionResult] = {}
        self._reader: asyncio.Task[None] | None = None

    def _open(self) -> asyncio.Queue[executor_pb2.SessionRequest | None]:
        if self._outbox is not None and self._reader is not None and not self._reader.done():
            return self._outbox
        outbox: asyncio.Queue[executor_pb2.SessionRequest | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[executor_pb2.SessionRequest]:
            while True:
                item = await outbox.get()
                if item is None:
                    return
                yield item

        call = self._stub.Session(requests())
        if self._on_open is not None:
            self._on_open()
        self._outbox = outbox
        self._reader = asyncio.get_running_loop().create_task(self._read(call, outbox))
        return outbox

    async def _read(self, call: Any, outbox: asyncio.Queue[Any]) -> None:
        why = "the executor ended the session"
        mine: set[tuple[str, int]] = set(self._pending)
        try:
            async for event in call:
                key = (event.action_id, event.attempt)
                entry = self._pending.get(key)
                if entry is None:
                    continue
                future, sink = entry
                if event.HasField("accepted"):
                    self._accepted.add(key)
                elif event.HasField("output"):
                    sink(event.output.stream, event.output.data)
                elif not future.done():
                    future.set_result(event.result)
                else:
                    # Its waiter was cancelled a moment ago and is about to ask for this report.
                    self._late[key] = event.result
        except grpc.RpcError as exc:
            why = from_rpc_error(exc).message
        finally:
            if self._outbox is outbox:
                self._outbox = None
            mine |= set(self._pending)
            for key in mine:
                entry = self._pending.get(key)
                if entry is None or entry[0].done():
                    continue
                if key in self._accepted:
                    error = Unavailable(
                        f"executor session lost mid-action: {why}", reason="EXECUTOR_SESSION_LOST"
                    )
                else:
                    error = Unavailable(f"executor session lost before the action started: {why}")
                entry[0].set_exception(error)

    async def run(
        self,
        request: executor_pb2.ExecRequest,
        on_output: OutputSink,
        timeout: float,
        spent: pb.Cost | None = None,
    ) -> pb.ActionResult:
        """The action's result. When this is cancelled, the action is cancelled on the executor,
        and its report of what the action used (within CANCEL_REPORT_S) goes into `spent`."""
        key = (request.action_id, request.attempt or 1)
        future: asyncio.Future[pb.ActionResult] = asyncio.get_running_loop().create_future()
        self._pending[key] = (future, on_output)
        outbox = self._open()
        try:
            outbox.put_nowait(executor_pb2.SessionRequest(exec=request))
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise DeadlineExceeded(f"no result from the executor within {timeout:g}s") from None
        except BaseException as exc:
            # `wait_for` cancels `future` itself when we are cancelled, so "done" is not "answered":
            # only a result the executor delivered means there is nothing left to cancel there.
            answered = future.done() and not future.cancelled() and future.exception() is None
            if answered and spent is not None and isinstance(exc, asyncio.CancelledError):
                spent.CopyFrom(future.result().cost)  # it ended as we were cancelled: still paid for
            if not answered and self._outbox is outbox:
                outbox.put_nowait(
                    executor_pb2.SessionRequest(
                        cancel=executor_pb2.CancelAction(action_id=request.action_id, attempt=key[1])
                    )
                )
                if isinstance(exc, asyncio.CancelledError) and spent is not None:
                    await self._collect_spent(key, on_output, spent)
            raise
        finally:
            self._pending.pop(key, None)
            self._accepted.discard(key)
            self._late.pop(key, None)

    async def _collect_spent(self, key: tuple[str, int], on_output: OutputSink, spent: pb.Cost) -> None:
        """Wait a little for a cancelled action's last report: the executor answers a cancel once
        the action's tree is dead, with what it used. Without one in time, nothing is filled in."""
        late = self._late.pop(key, None)
        if late is not None:
            spent.CopyFrom(late.cost)
            return
        report: asyncio.Future[pb.ActionResult] = asyncio.get_running_loop().create_future()
        self._pending[key] = (report, on_output)
        done, _ = await asyncio.wait({report}, timeout=self.report_wait_s)
        if done and report.exception() is None:
            spent.CopyFrom(report.result().cost)

    async def close(self) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(None)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


class ToolCatalogue:
    """The executor's tools as it declares them (Capabilities.tool_specs), fetched and kept. The
    planner gets them with every decision (the react agent offers a model what the executor really
    runs); the retry rules read each tool's declared `repeat` (repeat.py)."""

    def __init__(self, stub: executor_pb2_grpc.ExecutorStub) -> None:
        self._stub = stub
        self._specs: dict[str, pb.ToolSpec] = {}
        self._listed: list[pb.ToolSpec] = []
        self._fetched_at = float("-inf")
        self._tried_at = float("-inf")
        self._fetch: asyncio.Task[None] | None = None
        # Bumped by mark_stale: a fetch that began before it does not count as fresh.
        self._generation = 0

    def mark_stale(self) -> None:
        """The executor may have changed (a new session opened): fetch again on the next use."""
        self._generation += 1
        self._fetched_at = float("-inf")

    async def get(self) -> dict[str, pb.ToolSpec]:
        """Tool name -> its declaration. A stale catalogue is refreshed in the background and used
        meanwhile; only while nothing is known yet does the caller wait for the executor's answer.
        Empty if the executor cannot be reached."""
        now = time.monotonic()
        due = now - self._fetched_at >= CATALOGUE_REFRESH_S and now - self._tried_at >= CATALOGUE_RETRY_S
        if due and self._fetch is None:
            self._tried_at = now
            self._fetch = asyncio.ensure_future(self._refresh())
        if not self._specs and self._fetch is not None:
            await asyncio.shield(self._fetch)
        return self._specs

    async def _refresh(self) -> None:
        generation = self._generation
        try:
            caps = await self._stub.GetCapabilities(
                executor_pb2.GetCapabilitiesRequest(), timeout=CATALOGUE_TIMEOUT_S
            )
        except grpc.RpcError as exc:
            log.warning("cannot read the executor's tools: %s", exc.details() or exc.code())
            return
        finally:
            self._fetch = None
        self._specs = {spec.name: spec for spec in caps.tool_specs}
        self._listed = list(caps.tool_specs)
        if generation == self._generation:
            self._fetched_at = time.monotonic()

    async def listed(self) -> list[pb.ToolSpec]:
        """The same, as the list a DecideRequest carries."""
        await self.get()
        return self._listed
