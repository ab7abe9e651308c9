"""Which planner decides a task: the mesh's own planner, and the agent workers that registered.

An agent worker (`agentmesh worker --agents ...`) is a planner process a user runs with their own
agent code. It registers with the coordinator (AgentWorkers.Register: its address and its agents,
with versions and input schemas) and registers again every HEARTBEAT_S; a registration not renewed
within LEASE_S lapses. The coordinator never imports agent code: it only routes.

Routing a decision, for a task pinned to (agent, version):
- the worker that decided the task last, if it still serves that version (sticky: its coroutine is
  live there, so the decision costs no replay);
- else the least busy member serving that version (it answers HISTORY_REQUIRED, and replays);
- a worker whose call fails UNAVAILABLE (it died) is passed over until it registers again, so the
  retry goes to another member at once.
The mesh's planner is always a member; what it serves is read with ListAgents and kept CATALOGUE_S.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import grpc

from protos.agentmesh.v1 import agent_service_pb2 as api
from protos.agentmesh.v1 import common_pb2 as pb
from protos.agentmesh.v1 import planner_pb2, planner_pb2_grpc
from services.runtime.channels import insecure_channel
from services.runtime.errors import AgentMeshError, InvalidArgument, Unavailable, from_rpc_error

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
LEASE_S = 10.0
# The mesh planner's agent list is read again after this long.
CATALOGUE_S = 5.0
CATALOGUE_TIMEOUT_S = 2.0
# A worker whose call failed UNAVAILABLE is passed over this long, unless it registers again first.
DOWN_S = 30.0
# Tasks whose last deciding worker is remembered (least recently decided forgotten first).
STICKY_TASKS = 100_000
MESH_PLANNER = "planner"
VERSION_UNAVAILABLE = "AGENT_VERSION_UNAVAILABLE"


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Versions in order: numeric parts as numbers (1 < 2 < 10, 1.9 < 1.10), others as text; no
    version sorts first."""
    parts = re.split(r"[.\-+_]", version) if version else []
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


@dataclass(frozen=True, slots=True)
class Served:
    """One agent as a member serves it."""

    version: str
    description: str
    input_schema_json: str


@dataclass(slots=True)
class Member:
    id: str
    address: str
    channel: grpc.aio.Channel
    stub: planner_pb2_grpc.PlannerStub
    # None: not known yet (the mesh planner before its first ListAgents answer).
    agents: dict[str, Served] | None = None
    expires: float = float("inf")
    down_until: float = 0.0
    inflight: int = 0
    decided: int = 0
    # Replaced or gone: its channel is closed once its last call ends (closing it under a call
    # would cancel that call's awaiting task as if the task itself were being cancelled).
    retired: bool = False
    registered_at: float = field(default_factory=time.time)

    def serves(self, agent: str, version: str) -> bool:
        if self.agents is None:
            return True  # unknown: worth asking (it answers UNKNOWN_AGENT otherwise)
        served = self.agents.get(agent)
        return served is not None and (not version or served.version == version)


def _retire(member: Member) -> None:
    member.retired = True
    if not member.inflight:
        asyncio.ensure_future(member.channel.close(grace=None))


def _served(infos: list[api.AgentInfo]) -> dict[str, Served]:
    return {a.name: Served(a.version, a.description, a.input_schema_json) for a in infos}


class PlannerPool:
    def __init__(self, planner_addr: str) -> None:
        channel = insecure_channel(planner_addr)
        self.mesh = Member(MESH_PLANNER, planner_addr, channel, planner_pb2_grpc.PlannerStub(channel))
        self._workers: dict[str, Member] = {}
        self._sticky: OrderedDict[str, str] = OrderedDict()
        self._catalogue_at = float("-inf")
        self._catalogue: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ membership

    def register(self, worker_id: str, address: str, agents: list[api.AgentInfo]) -> None:
        if not worker_id or not address:
            raise InvalidArgument("a worker registers with its worker_id and address", reason="BAD_WORKER")
        if worker_id == MESH_PLANNER:
            raise InvalidArgument(f"worker id {MESH_PLANNER!r} is the mesh's own", reason="BAD_WORKER")
        now = time.monotonic()
        member = self._workers.get(worker_id)
        if member is None or member.address != address:
            if member is not None:
                _retire(member)
            channel = insecure_channel(address)
            member = Member(worker_id, address, channel, planner_pb2_grpc.PlannerStub(channel))
            self._workers[worker_id] = member
            log.info(
                "agent worker %s at %s: %s",
                worker_id,
                address,
                ", ".join(f"{a.name} v{a.version}" if a.version else a.name for a in agents) or "no agents",
            )
        member.agents = _served(agents)
        member.expires = now + LEASE_S
        member.down_until = 0.0

    def leave(self, worker_id: str) -> None:
        member = self._workers.pop(worker_id, None)
        if member is not None:
            log.info("agent worker %s left", worker_id)
            _retire(member)

    def members(self) -> list[Member]:
        """The mesh planner and every worker whose registration holds."""
        now = time.monotonic()
        for worker_id in [w for w, m in self._workers.items() if m.expires <= now]:
            log.warning("agent worker %s stopped registering; dropped", worker_id)
            self.leave(worker_id)
        return [self.mesh, *self._workers.values()]

    async def close(self) -> None:
        for member in [self.mesh, *self._workers.values()]:
            await member.channel.close(grace=None)

    # ------------------------------------------------------------------ the mesh planner's agents

    async def _read_catalogue(self) -> None:
        try:
            reply = await self.mesh.stub.ListAgents(api.ListAgentsRequest(), timeout=CATALOGUE_TIMEOUT_S)
        except grpc.RpcError as exc:
            log.debug("cannot read the planner's agents: %s", exc.details() or exc.code())
            return
        finally:
            self._catalogue = None
        self.mesh.agents = _served(list(reply.agents))
        self._catalogue_at = time.monotonic()

    async def _fresh(self) -> None:
        """Read the mesh planner's agents if stale; wait for the answer only while none is known."""
        if time.monotonic() - self._catalogue_at >= CATALOGUE_S and self._catalogue is None:
            self._catalogue = asyncio.ensure_future(self._read_catalogue())
        if self.mesh.agents is None and self._catalogue is not None:
            await asyncio.shield(self._catalogue)

    async def newest(self, agent: str) -> str:
        """The version new tasks of `agent` run on: the highest served now ("" if none has one)."""
        await self._fresh()
        versions = [
            m.agents[agent].version for m in self.members() if m.agents is not None and agent in m.agents
        ]
        return max(versions, key=version_key, default="")

    # ------------------------------------------------------------------ routing

    def pick(self, task_id: str, agent: str, version: str) -> Member | None:
        now = time.monotonic()
        members = [m for m in self.members() if m.serves(agent, version)]
        usable = [m for m in members if m.down_until <= now]
        sticky = self._sticky.get(task_id) if task_id else None
        for member in usable:
            if member.id == sticky:
                return member
        # Known servers before the mesh planner while its agents are unknown.
        return min(usable, key=lambda m: (m.agents is None, m.inflight, m.decided), default=None)

    def _unavailable(self, agent: str, version: str) -> Unavailable:
        what = f"{agent} v{version}" if version else agent
        return Unavailable(
            f"no planner serving {what} is reachable (agent workers: start one with `agentmesh worker`)",
            reason=VERSION_UNAVAILABLE,
            retry_after_s=1.0,
        )

    def _unknown(self, agent: str) -> InvalidArgument:
        known = sorted({name for m in self.members() for name in m.agents or ()})
        return InvalidArgument(
            f"unknown agent {agent!r}; known: {', '.join(known)}",
            reason="UNKNOWN_AGENT",
            field_violations=[("agent", "unknown agent")],
        )

    async def _call(self, member: Member, call: str, request: object, timeout: float, **kw: object) -> object:
        member.inflight += 1
        try:
            return await getattr(member.stub, call)(request, timeout=timeout, **kw)
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
            if member is not self.mesh and exc.code() == grpc.StatusCode.UNAVAILABLE:
                if error.reason != VERSION_UNAVAILABLE:  # a live worker of another version is fine
                    # Gone or going: its tasks go elsewhere until it registers again.
                    member.down_until = time.monotonic() + DOWN_S
                    log.warning("agent worker %s unreachable: %s", member.id, error.message)
            raise error from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the caller is being cancelled
            # The call was cut off here (its channel closed): the worker is gone, not the task.
            raise Unavailable(f"agent worker {member.id} went away mid-call") from None
        finally:
            member.inflight -= 1
            if member.retired and not member.inflight:
                asyncio.ensure_future(member.channel.close(grace=None))

    async def decide(self, request: planner_pb2.DecideRequest, timeout: float) -> pb.Decision:
        await self._fresh()
        member = self.pick(request.task_id, request.agent, request.agent_version)
        if member is None:
            raise self._unavailable(request.agent, request.agent_version)
        try:
            decision = await self._call(member, "Decide", request, timeout)
        except AgentMeshError as exc:
            if exc.reason == VERSION_UNAVAILABLE:
                self._sticky.pop(request.task_id, None)
            raise
        member.decided += 1
        self._sticky[request.task_id] = member.id
        self._sticky.move_to_end(request.task_id)
        if len(self._sticky) > STICKY_TASKS:
            self._sticky.popitem(last=False)
        assert isinstance(decision, pb.Decision)
        return decision

    async def validate(self, agent: str, input_json: str, timeout: float) -> str:
        """Check a new task's input with the newest version of its agent; that version, which the
        task is pinned to. Waits (up to `timeout`) for a planner that is reconnecting."""
        deadline = time.monotonic() + timeout
        request = planner_pb2.ValidateRequest(agent=agent, input_json=input_json)
        while True:
            version = await self.newest(agent)
            member = self.pick("", agent, version)
            left = deadline - time.monotonic()
            if member is not None:
                try:
                    # wait_for_ready (the mesh planner): one that just restarted is back before the
                    # channel's reconnect backoff would notice. A worker that is gone is passed
                    # over instead (it registers again when it is back).
                    reply = await self._call(
                        member, "Validate", request, max(left, 0.1), wait_for_ready=member is self.mesh
                    )
                except Unavailable:
                    if member is self.mesh or left <= 0:
                        raise
                    continue  # that worker is gone: ask another, or wait for one
                assert isinstance(reply, planner_pb2.ValidateResponse)
                return reply.version or version
            if not any(m.agents is None or agent in m.agents for m in self.members()):
                raise self._unknown(agent)
            if left <= 0:
                raise self._unavailable(agent, version)
            await asyncio.sleep(min(0.05, left))  # a worker that is starting registers soon

    async def list_agents(self) -> list[api.AgentInfo]:
        """Every agent served now, with each version's workers, newest version first."""
        await self._fresh()
        by_name: dict[str, dict[str, tuple[Served, list[str]]]] = {}
        for member in self.members():
            for name, served in (member.agents or {}).items():
                entry = by_name.setdefault(name, {}).setdefault(served.version, (served, []))
                entry[1].append(member.id)
        agents = []
        for name in sorted(by_name):
            versions = sorted(by_name[name].items(), key=lambda kv: version_key(kv[0]), reverse=True)
            newest = versions[0][1][0]
            agents.append(
                api.AgentInfo(
                    name=name,
                    description=newest.description,
                    version=newest.version,
                    input_schema_json=newest.input_schema_json,
                    versions=[
                        api.AgentVersion(
                            version=v, input_schema_json=s.input_schema_json, workers=sorted(ids)
                        )
                        for v, (s, ids) in versions
                    ],
                )
            )
        return agents
