"""Submit, follow and inspect tasks through gRPC and HTTP on a real mesh."""

from __future__ import annotations

import asyncio
import json

import httpx

from agentmesh.local import TENANT_KEYS, Mesh
from protos.agentmesh.v1 import common_pb2 as pb
from services.runtime.errors import FailedPrecondition
from tests.conftest import client_for, run

PIPELINE = {
    "steps": [
        {"id": "a", "tool": "python", "args": {"code": "print(6*7)"}},
        {"id": "b", "tool": "echo", "args": {"x": 1}},
        {
            "id": "c",
            "tool": "shell",
            "args": {"command": "cat data.csv"},
            "files": {"data.csv": "a,b\n1,2\n"},
            "depends_on": ["a", "b"],
        },
    ]
}


def auth(tenant: str = "alpha") -> dict[str, str]:
    return {"Authorization": f"Bearer {TENANT_KEYS[tenant]}"}


def test_submit_over_grpc_reaches_succeeded_with_result(mesh: Mesh) -> None:
    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", PIPELINE)
            assert task.state == pb.TASK_STATE_QUEUED
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            steps = json.loads(done.result_json)["steps"]
            assert steps["a"]["stdout"] == "42\n"
            assert steps["b"]["output"] == {"x": 1}
            assert steps["c"]["stdout"] == "a,b\n1,2\n"
            assert all(s["status"] == "ok" and s["attempts"] == 1 for s in steps.values())
            got = await client.get(task.id)
            assert got == done
            listed = await client.list(limit=1000)
            assert [t for t in listed.tasks if t.id == task.id] == [done]

    run(go())


def test_submit_over_http_agrees_with_grpc(mesh: Mesh) -> None:
    with httpx.Client(base_url=mesh.gateway_url, timeout=30) as http:
        reply = http.post(
            "/v1/tasks",
            json={"agent": "pipeline", "input": PIPELINE, "labels": {"via": "http"}},
            headers=auth(),
        )
        assert reply.status_code == 201, reply.text
        task_id = reply.json()["id"]
        events = []
        with http.stream("GET", f"/v1/tasks/{task_id}/events", headers=auth()) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
        assert events[-1]["kind"] == "state" and events[-1]["data"]["state"] == "SUCCEEDED"
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        body = http.get(f"/v1/tasks/{task_id}", headers=auth()).json()
        assert body["state"] == "SUCCEEDED" and body["labels"] == {"via": "http"}
        listed = http.get("/v1/tasks", params={"state": "SUCCEEDED", "limit": 1000}, headers=auth()).json()
        assert task_id in [t["id"] for t in listed["tasks"]]

    async def check() -> None:
        async with client_for(mesh) as client:
            assert (await client.get(task_id)).state == pb.TASK_STATE_SUCCEEDED

    run(check())


def test_late_and_reconnecting_watchers_get_every_event_once_in_order(mesh: Mesh) -> None:
    spec = {
        "steps": [
            {"id": f"s{i}", "tool": "shell", "args": {"command": f"echo line{i}; sleep 0.05"}}
            for i in range(6)
        ]
        + [{"id": "end", "tool": "echo", "depends_on": [f"s{i}" for i in range(6)]}]
    }

    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", spec)
            full = [e async for e in client.watch(task.id)]
            seqs = [e.seq for e in full]
            assert seqs == list(range(1, len(full) + 1))
            # late watcher: after the end, from 0
            again = [e async for e in client.watch(task.id)]
            assert again == full
            # drop and reconnect with the last seq seen
            first_part = []
            async for event in client.watch(task.id):
                first_part.append(event)
                if len(first_part) == 7:
                    break
            rest = [e async for e in client.watch(task.id, after_seq=first_part[-1].seq)]
            assert first_part + rest == full

    run(go())


def test_sse_resumes_from_last_event_id(mesh: Mesh) -> None:
    async def go() -> str:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", PIPELINE)
            await client.wait(task.id)
            return task.id

    task_id = run(go())
    with httpx.Client(base_url=mesh.gateway_url, timeout=30) as http:

        def ids(headers: dict[str, str], params: dict[str, str] | None = None) -> list[int]:
            seen = []
            with http.stream("GET", f"/v1/tasks/{task_id}/events", headers=headers, params=params) as stream:
                assert stream.status_code == 200
                for line in stream.iter_lines():
                    if line.startswith("id:"):
                        seen.append(int(line[3:]))
            return seen

        everything = ids(auth())
        assert everything == list(range(1, len(everything) + 1))
        assert ids({**auth(), "Last-Event-ID": "4"}) == everything[4:]
        assert ids(auth(), {"after": "6"}) == everything[6:]


def test_watch_survives_a_stopped_bus(mesh: Mesh) -> None:
    """With the bus frozen, live events still reach watchers (from the coordinator and the store)."""
    import os
    import signal

    bus = mesh.pid("bus")
    spec = {"steps": [{"id": "s", "tool": "shell", "args": {"command": "sleep 0.3; echo done"}}]}

    async def go() -> None:
        async with client_for(mesh) as client:
            os.kill(bus, signal.SIGSTOP)
            try:
                task = await client.submit("pipeline", spec)
                events = [e async for e in client.watch(task.id)]
            finally:
                os.kill(bus, signal.SIGCONT)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert json.loads(events[-1].data_json)["state"] == "SUCCEEDED"

    run(go())


def test_one_task_for_twenty_concurrent_submits_with_one_key(mesh: Mesh) -> None:
    async def go() -> None:
        async with client_for(mesh) as client:
            tasks = await asyncio.gather(
                *[client.submit("pipeline", PIPELINE, idempotency_key="same-key-1") for _ in range(20)]
            )
            assert len({t.id for t in tasks}) == 1
            from services.runtime.errors import AlreadyExists

            try:
                await client.submit(
                    "pipeline", {"steps": [{"id": "x", "tool": "echo"}]}, idempotency_key="same-key-1"
                )
            except AlreadyExists as exc:
                assert exc.reason == "IDEMPOTENCY_KEY_REUSED"
            else:
                raise AssertionError("a reused key with another body was accepted")
            listed = await client.list(limit=1000)
            assert sum(1 for t in listed.tasks if t.idempotency_key == "same-key-1") == 1

    run(go())
    with httpx.Client(base_url=mesh.gateway_url, timeout=30) as http:
        reply = http.post(
            "/v1/tasks",
            headers=auth(),
            json={
                "agent": "pipeline",
                "input": {"steps": [{"id": "y", "tool": "echo"}]},
                "idempotency_key": "same-key-1",
            },
        )
        assert reply.status_code == 409
        assert reply.json()["error"]["reason"] == "IDEMPOTENCY_KEY_REUSED"


def test_infer_step_without_a_model_fails_clearly(mesh: Mesh) -> None:
    """With no model configured, the inference worker refuses at once with NO_MODEL (a model still
    loading is waited for instead: test_model_agents.py): no hang, no fake text."""

    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit(
                "pipeline", {"steps": [{"id": "gen", "tool": "infer", "args": {"prompt": "hi"}}]}
            )
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_FAILED
            step = json.loads(done.result_json)["steps"]["gen"]
            assert step["status"] == "failed" and step["error"]["reason"] == "NO_MODEL"

    run(go())


def test_await_input_resumes_with_the_data_sent(mesh: Mesh) -> None:
    async def go() -> None:
        async with client_for(mesh) as client:
            spec = {
                "steps": [
                    {"id": "ask", "tool": "approval", "args": {"prompt": "go?"}},
                    {"id": "after", "tool": "echo", "args": {"ok": True}, "depends_on": ["ask"]},
                ]
            }
            task = await client.submit("pipeline", spec)
            async for event in client.watch(task.id):
                if event.kind == "state" and json.loads(event.data_json)["state"] == "WAITING":
                    break
            waiting = await client.get(task.id)
            assert waiting.state == pb.TASK_STATE_WAITING and waiting.input_prompt == "go?"
            reply = await client.send_input(task.id, {"approved": True, "by": "test"})
            assert reply.delivered
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_SUCCEEDED
            assert json.loads(done.result_json)["steps"]["ask"]["output"] == {"approved": True, "by": "test"}

    run(go())


def test_every_grpc_service_serves_metrics_health_and_reflection(mesh: Mesh) -> None:
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    for name, port in mesh.metrics_ports.items():
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "agentmesh_rpc_total" in body, name
    assert (
        "agentmesh_tasks_running"
        in httpx.get(f"http://127.0.0.1:{mesh.metrics_ports['coordinator']}/metrics", timeout=10).text
    )
    with grpc.insecure_channel(mesh.coordinator_addr) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"agentmesh.v1.AgentService", "grpc.health.v1.Health"} <= names


def _metric(body: str, name: str, labels: str) -> float:
    """The value of one sample of the Prometheus text format, 0 when absent."""
    prefix = f"{name}{{{labels}}} "
    return sum(float(line[len(prefix) :]) for line in body.splitlines() if line.startswith(prefix))


def test_spend_is_counted_in_the_coordinators_metrics(mesh: Mesh) -> None:
    url = f"http://127.0.0.1:{mesh.metrics_ports['coordinator']}/metrics"
    before = httpx.get(url, timeout=10).text
    spec = {"steps": [{"id": "work", "tool": "python", "args": {"code": "sum(range(300000))"}}]}

    async def go() -> pb.Task:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", spec)
            return await client.wait(task.id)

    done = run(go())
    assert done.state == pb.TASK_STATE_SUCCEEDED and done.cost.usd > 0
    after = httpx.get(url, timeout=10).text
    for name, labels in (
        ("agentmesh_spend_usd_total", 'agent="pipeline"'),
        ("agentmesh_spend_total", 'agent="pipeline",resource="cpu_ms"'),
        ("agentmesh_spend_total", 'agent="pipeline",resource="wall_ms"'),
    ):
        grew = _metric(after, name, labels) - _metric(before, name, labels)
        assert grew > 0, (name, labels, grew)
    assert "agentmesh_budget_exceeded_total" in after


def test_an_input_that_does_not_come_in_time_fails_the_wait_with_input_timeout(mesh: Mesh) -> None:
    spec = {"steps": [{"id": "ask", "tool": "approval", "args": {"prompt": "now?", "timeout_s": 0.5}}]}

    async def go() -> None:
        async with client_for(mesh) as client:
            done = await client.wait((await client.submit("pipeline", spec)).id)
            assert done.state == pb.TASK_STATE_FAILED
            ask = json.loads(done.result_json)["steps"]["ask"]
            assert ask["status"] == "failed" and ask["error"]["reason"] == "INPUT_TIMEOUT", ask
            try:
                await client.send_input(done.id, {"approved": True})
            except FailedPrecondition as exc:  # too late: the task has ended, and says so
                assert exc.reason == "TASK_FINISHED"
            else:
                raise AssertionError("an input for a finished task was accepted")

    run(go())


def test_every_attempt_of_a_retried_step_is_paid_for(mesh: Mesh) -> None:
    flaky = {
        "id": "flaky",
        "tool": "shell",
        "args": {"command": "sleep 0.3; exit 3"},
        "retry": {"attempts": 3, "backoff_s": 0},
    }

    async def go() -> None:
        async with client_for(mesh) as client:
            done = await client.wait((await client.submit("pipeline", {"steps": [flaky]})).id)
            assert done.state == pb.TASK_STATE_FAILED
            step = json.loads(done.result_json)["steps"]["flaky"]
            assert step["attempts"] == 3, step
            # Three runs of at least 0.3 s each, not only the last one.
            assert step["cost"]["wall_ms"] >= 900 and done.cost.wall_ms >= 900, (step["cost"], done.cost)

    run(go())


def test_a_pipeline_step_starts_when_its_own_dependencies_are_done(mesh: Mesh) -> None:
    """Chain a: one slow step; chain b: three quick ones. b's steps each start as soon as the one
    before them is done, while a's slow step still runs (not once the first wave is over)."""
    spec = {
        "steps": [
            {"id": "a1", "tool": "shell", "args": {"command": "sleep 3"}},
            {"id": "b1", "tool": "echo", "args": {"n": 1}},
            {"id": "b2", "tool": "echo", "args": {"n": 2}, "depends_on": ["b1"]},
            {"id": "b3", "tool": "echo", "args": {"n": 3}, "depends_on": ["b2"]},
            {"id": "a2", "tool": "echo", "args": {"after": "a1"}, "depends_on": ["a1"]},
        ]
    }

    async def go() -> None:
        async with client_for(mesh) as client:
            task = await client.submit("pipeline", spec)
            done = await client.wait(task.id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
            steps = json.loads(done.result_json)["steps"]
            assert [steps[s]["output"] for s in ("b1", "b2", "b3")] == [{"n": 1}, {"n": 2}, {"n": 3}]
            events = [e async for e in client.watch(task.id)]
            finished = [json.loads(e.data_json)["key"] for e in events if e.kind == "action.finished"]
            assert finished == ["b1", "b2", "b3", "a1", "a2"], finished

    run(go())


def test_the_executor_session_stream_is_measured_and_refuses_malformed_messages(mesh: Mesh) -> None:
    """Every exec action goes over Executor.Session: its messages and open streams are metrics,
    and a message that is not protobuf ends the stream with INVALID_ARGUMENT, not INTERNAL."""
    import grpc

    spec = {"steps": [{"id": "a", "tool": "shell", "args": {"command": "echo hi"}}]}

    async def go() -> None:
        async with client_for(mesh) as client:
            done = await client.wait((await client.submit("pipeline", spec)).id)
            assert done.state == pb.TASK_STATE_SUCCEEDED, done.error
        async with grpc.aio.insecure_channel(mesh.env["AGENTMESH_EXECUTOR_ADDR"]) as channel:
            session = channel.stream_stream("/agentmesh.v1.Executor/Session")
            call = session(iter([b"\\xff\\xff\\xff"]), timeout=10)
            try:
                async for _ in call:
                    pass
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
            else:
                raise AssertionError("a malformed Session message was accepted")

    run(go())
    body = httpx.get(f"http://127.0.0.1:{mesh.metrics_ports['executor']}/metrics", timeout=10).text
    method = 'method="/agentmesh.v1.Executor/Session"'
    assert _metric(body, "agentmesh_rpc_stream_messages_total", f'direction="received",{method}') >= 1
    assert _metric(body, "agentmesh_rpc_stream_messages_total", f'direction="sent",{method}') >= 2
    assert _metric(body, "agentmesh_rpc_streams_open", method) >= 1  # the coordinator's session
    assert mesh.all_alive()
