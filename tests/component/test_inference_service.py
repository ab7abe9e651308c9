"""The inference service in-process on port 0 with real stubs: bad input is refused clearly."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from protos.agentmesh.v1 import common_pb2 as pb
from protos.agentmesh.v1 import inference_pb2 as ipb
from services.inference.servicer import InferenceServicer
from tests.component.support import default_generator, inference_stub, make_engine

BAD = [
    pb.InferAction(prompt=""),
    pb.InferAction(prompt="   "),
    pb.InferAction(prompt="hi", max_tokens=-1),
    pb.InferAction(prompt="hi", max_tokens=1_000_000),
    pb.InferAction(prompt="hi", model="no-such-model"),
    pb.InferAction(prompt="hi", temperature=-1),
    pb.InferAction(prompt="hi", top_p=1.5),
    pb.InferAction(prompt="hi", top_k=-3),
    pb.InferAction(prompt="hi", stop=[""]),
    pb.InferAction(messages=[pb.ChatMessage(role="wizard", content="hi")]),
    pb.InferAction(prompt="word " * 2000),  # longer than the context
]


def test_bad_generate_requests_are_invalid_argument_and_the_worker_keeps_serving() -> None:
    generator = default_generator()

    async def go() -> None:
        engine = make_engine(generator)
        engine.start()
        servicer = InferenceServicer()
        servicer.attach(engine, generator, None, "cpu")
        try:
            async with inference_stub(servicer) as stub:
                for params in BAD:
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        async for _ in stub.Generate(ipb.GenerateRequest(params=params), timeout=30):
                            pass
                    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, params
                    assert caught.value.details()
                # Bytes that are not valid UTF-8 where the prompt is: a client that bypasses protobuf.
                wire = ipb.GenerateRequest(params=pb.InferAction(prompt="PLACEHOLDER", max_tokens=4))
                raw = stub.channel.unary_stream(  # type: ignore[attr-defined]
                    "/agentmesh.v1.Inference/Generate", response_deserializer=ipb.GenerateEvent.FromString
                )
                bad_bytes = wire.SerializeToString().replace(b"PLACEHOLDER", b"\xff\xfe\xfdHOLDER")
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    async for _ in raw(bad_bytes, timeout=30):
                        pass
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "UTF-8" in (caught.value.details() or "")
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Embed(ipb.EmbedRequest(params=pb.EmbedAction(texts=["x"])), timeout=30)
                assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # no embed model here
                events = [
                    e
                    async for e in stub.Generate(
                        ipb.GenerateRequest(params=pb.InferAction(prompt="Say yes.", max_tokens=4)),
                        timeout=60,
                    )
                ]
                assert events[-1].final and events[-1].usage.completion_tokens >= 1
        finally:
            await asyncio.get_running_loop().run_in_executor(None, engine.stop)

    asyncio.run(asyncio.wait_for(go(), 300))
