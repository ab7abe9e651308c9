"""The OpenAI-compatible forwarding backend against a real HTTP server on loopback that speaks the
chat-completions streaming protocol (a stand-in for vLLM / llama.cpp / Ollama, built here)."""

from __future__ import annotations

import asyncio
import json

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from protos.agentmesh.v1 import common_pb2 as pb
from protos.agentmesh.v1 import inference_pb2 as ipb
from services.inference.openai_backend import OpenAIBackend, OpenAIConfig
from services.inference.servicer import InferenceServicer
from services.runtime.errors import InvalidArgument
from services.runtime.procs import free_port
from tests.component.support import inference_stub


class FakeServer:
    """Answers the first request of each conversation with 429, then streams three pieces."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.port = free_port()

        async def completions(request: Request) -> Response:
            body = await request.json()
            self.requests.append(body)
            if body["model"] == "refuse":
                return JSONResponse({"error": {"message": "no such model"}}, status_code=400)
            if len(self.requests) == 1:
                return Response(status_code=429, headers={"Retry-After": "0"})

            async def stream():  # type: ignore[no-untyped-def]
                for piece in ("Hello", " world", "!"):
                    yield f"data: {json.dumps({'choices': [{'delta': {'content': piece}}]})}\n\n"
                    await asyncio.sleep(0.01)
                done = {"choices": [{"delta": {}, "finish_reason": "stop"}]}
                yield f"data: {json.dumps(done)}\n\n"
                usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
                yield f"data: {json.dumps(usage)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(stream(), media_type="text/event-stream")

        app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))

    async def __aenter__(self) -> FakeServer:
        self.task = asyncio.ensure_future(self.server.serve())
        for _ in range(200):
            if self.server.started:
                return self
            await asyncio.sleep(0.01)
        raise RuntimeError("fake server did not start")

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 10)


def test_streams_retries_a_429_and_reports_usage() -> None:
    async def go() -> None:
        async with FakeServer() as fake:
            backend = OpenAIBackend(
                OpenAIConfig(base_url=f"http://127.0.0.1:{fake.port}/v1", model="m", api_key="k")
            )
            params = pb.InferAction(prompt="hi", max_tokens=5, temperature=0.5, stop=["\n"])
            chunks = [c async for c in backend.generate([("user", "hi")], params)]
            await backend.close()
            assert "".join(c.text for c in chunks) == "Hello world!"
            assert chunks[-1].final and (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (7, 3)
            assert backend.retries == 1 and len(fake.requests) == 2
            sent = fake.requests[-1]
            assert sent["messages"] == [{"role": "user", "content": "hi"}] and sent["stream"] is True
            assert (sent["max_tokens"], sent["stop"]) == (5, ["\n"])

    asyncio.run(asyncio.wait_for(go(), 60))


def test_a_refusal_is_not_retried() -> None:
    async def go() -> None:
        async with FakeServer() as fake:
            backend = OpenAIBackend(OpenAIConfig(base_url=f"http://127.0.0.1:{fake.port}/v1", model="refuse"))
            with pytest.raises(InvalidArgument):
                async for _ in backend.generate([("user", "hi")], pb.InferAction(prompt="hi")):
                    pass
            await backend.close()
            assert len(fake.requests) == 1

    asyncio.run(asyncio.wait_for(go(), 60))


def test_the_service_routes_the_named_model_to_the_backend() -> None:
    async def go() -> None:
        async with FakeServer() as fake:
            servicer = InferenceServicer()
            servicer.remote = OpenAIBackend(
                OpenAIConfig(base_url=f"http://127.0.0.1:{fake.port}/v1", model="big")
            )
            try:
                async with inference_stub(servicer) as stub:
                    models = await stub.ListModels(ipb.ListModelsRequest())
                    assert [(m.name, m.device) for m in models.models] == [("big", "remote")]
                    request = ipb.GenerateRequest(params=pb.InferAction(prompt="hi", model="big"))
                    events = [e async for e in stub.Generate(request, timeout=30)]
                    assert "".join(e.text for e in events) == "Hello world!"
                    assert events[-1].final and events[-1].usage.completion_tokens == 3
            finally:
                await servicer.remote.close()

    asyncio.run(asyncio.wait_for(go(), 60))
