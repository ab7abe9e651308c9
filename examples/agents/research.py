"""A research agent: break a question into sub-questions, answer them in parallel with a model,
drop near-duplicate answers by embedding similarity, and write a summary.

    AGENTMESH_OPENAI_BASE_URL=http://127.0.0.1:8000/v1 AGENTMESH_OPENAI_MODEL=my-model \\
      .venv/bin/agentmesh up --agents examples/agents/research.py
    .venv/bin/agentmesh submit research --watch \\
      --input '{"question": "Why is the sky blue?", "model": "my-model"}'

`model` names the model the inference worker serves: the one behind its OpenAI-compatible backend
(vLLM, llama.cpp's server, Ollama, a hosted API), or "" for the embedded one. Every generation streams
to watchers and is paid for; the task's spend is on it when it ends.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

from agentmesh.sdk import Context, agent


class Question(BaseModel):
    question: str = Field(min_length=3, max_length=2000)
    model: str = ""
    angles: int = Field(default=3, ge=1, le=8)
    max_tokens: int = Field(default=160, ge=8, le=2000)
    # Embedding model for de-duplication ("" the embedded one; "none" to skip it).
    embed_model: str = ""


@agent(name="research", version="1", input=Question)
async def research(ctx: Context, q: Question) -> dict:
    """Answer a question from several angles with a model, de-duplicated, then summarised."""
    plan = await ctx.infer(
        f"List {q.angles} short, different sub-questions that together answer: {q.question}\n"
        "One per line, no numbering.",
        model=q.model,
        max_tokens=q.max_tokens,
    )
    angles = [line.strip(" -*0123456789.") for line in plan.text.splitlines() if line.strip()][: q.angles]
    angles = angles or [q.question]
    answers = await ctx.gather(
        *(
            ctx.infer(f"{a}\nAnswer in two sentences.", model=q.model, max_tokens=q.max_tokens, seed=i)
            for i, a in enumerate(angles)
        )
    )
    texts = [a.text.strip() for a in answers if a.text.strip()]
    kept = texts if q.embed_model == "none" else await distinct(ctx, texts, q.embed_model)
    ctx.emit("answers", {"angles": len(angles), "kept": len(kept)})
    summary = await ctx.infer(
        f"Question: {q.question}\nNotes:\n" + "\n".join(f"- {t}" for t in kept) + "\nWrite a short answer.",
        model=q.model,
        max_tokens=q.max_tokens,
    )
    return {
        "question": q.question,
        "angles": angles,
        "notes": kept,
        "answer": summary.text.strip(),
        "usd": round(ctx.usage.usd, 6),
        "tokens": ctx.usage.tokens_in + ctx.usage.tokens_out,
    }


async def distinct(ctx: Context, texts: list[str], model: str, threshold: float = 0.95) -> list[str]:
    if len(texts) < 2:
        return texts
    vectors = (await ctx.embed(texts, model=model)).vectors
    kept: list[int] = []
    for i, v in enumerate(vectors):
        if all(_cosine(v, vectors[j]) < threshold for j in kept):
            kept.append(i)
    return [texts[i] for i in kept]


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0
