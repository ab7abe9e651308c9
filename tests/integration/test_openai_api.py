"""The gateway's OpenAI-compatible API, driven by the official `openai` client against the embedded
models: model list, chat completions (whole and streamed), embeddings, errors, and a streaming
client that goes away cancelling its task. Every call is a task of its tenant, with its cost."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from agentmesh.local import TENANT_KEYS, Mesh
from protos.agentmesh.v1 import common_pb2 as pb
from tests.conftest import client_for, run, wait_inference_idle

HI = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]


@pytest.fixture
def oai(model_mesh: Mesh) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{model_mesh.gateway_url}/v1", api_key=TENANT_KEYS["alpha"], max_retries=0)


def model_of(client: openai.OpenAI, kind: str) -> str:
    return next(m.id for m in client.models.list().data if getattr(m, "kind", "") == kind)


def test_a_chat_completion_whole_and_streamed_says_the_same_and_is_a_task(
    oai: openai.OpenAI, model_mesh: Mesh
) -> None:
    model = model_of(oai, "generate")
    whole = oai.chat.completions.create(model=model, messages=HI, max_tokens=12, temperature=0, seed=3)
    text = whole.choices[0].message.content
    assert text and whole.choices[0].finish_reason in ("stop", "length") and whole.id.startswith("chatcmpl-")
    assert 1 <= whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 0
    chunks = list(
        oai.chat.completions.create(
            model=model, messages=HI, max_tokens=12, temperature=0, seed=3, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # greedy: the same tokens, whether streamed or not
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason

    async def the_task() -> pb.Task:
        async with client_for(model_mesh) as client:
            return await client.get(whole.id.removeprefix("chatcmpl-"))

    task = run(the_task())
    assert task.agent == "pipeline" and dict(task.labels)["api"] == "openai" and task.cost.usd > 0
    assert task.cost.tokens_out == whole.usage.completion_tokens  # the tenant pays for its direct use


def test_embeddings_come_back_decoded_by_the_client(oai: openai.OpenAI) -> None:
    reply = oai.embeddings.create(model=model_of(oai, "embed"), input=["a cat", "a dog", "a car"])
    vectors = [d.embedding for d in reply.data]
    assert len(vectors) == 3 and len({len(v) for v in vectors}) == 1 and len(vectors[0]) > 8
    assert [d.index for d in reply.data] == [0, 1, 2] and reply.usage.prompt_tokens > 0
    floats = oai.embeddings.create(model=model_of(oai, "embed"), input="a cat", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(vectors[0], abs=1e-5)


def test_bad_requests_get_openai_errors(oai: openai.OpenAI, model_mesh: Mesh) -> None:
    model = model_of(oai, "generate")
    with pytest.raises(openai.NotFoundError) as missing:
        oai.chat.completions.create(model="gpt-9", messages=HI)
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(model=model, messages=HI, temperature=5)
    assert bad.value.body["param"] == "temperature" and bad.value.body["type"] == "invalid_request_error"
    stranger = openai.OpenAI(base_url=f"{model_mesh.gateway_url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model=model, messages=HI)


def test_a_streaming_client_that_goes_away_cancels_its_task(oai: openai.OpenAI, model_mesh: Mesh) -> None:
    stream = oai.chat.completions.create(
        model=model_of(oai, "generate"),
        messages=[{"role": "user", "content": "Count from one to one thousand."}],
        max_tokens=1000,
        stream=True,
    )
    first = next(iter(stream))
    stream.close()
    task_id = first.id.removeprefix("chatcmpl-")

    async def ended() -> pb.Task:
        async with client_for(model_mesh) as client:
            return await asyncio.wait_for(client.wait(task_id), 30)

    task = run(ended())
    assert task.state == pb.TASK_STATE_CANCELLED, json.loads(task.result_json or "{}")
    assert task.cost.tokens_out < 1000
    assert wait_inference_idle(model_mesh) == 0
