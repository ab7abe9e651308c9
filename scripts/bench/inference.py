#!/usr/bin/env python3
"""The inference engine on this machine: tokens/s at 1..64 concurrent streams, time to first token
and inter-token latency under 32 streams, embeddings/s, and the memory-bandwidth roofline.

In-process (no gRPC): the engine's own throughput. Streams generate exactly --tokens tokens each
(end-of-text ignored) from different prompts, greedy. The roofline for one stream is the measured
copy bandwidth over the bytes of weights one decode step reads.

    .venv/bin/python scripts/bench/inference.py [--streams 1,4,16,32,64 --tokens 32]
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
from _common import percentile, report

from services.inference import models
from services.inference.bert import BertEmbedder
from services.inference.engine import Engine, GenRequest
from services.inference.generator import load_generator
from services.inference.xp import select_backend


def copy_bandwidth_gbs(xp, backend, mib: int = 512) -> float:  # type: ignore[no-untyped-def]
    src = xp.ones(mib * 1024 * 1024 // 4, dtype=xp.float32)
    dst = xp.empty_like(src)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        xp.copyto(dst, src)
        backend.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * src.nbytes / best / 1e9  # read + write


def run_streams(engine: Engine, generator, count: int, tokens: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    # Finals arrive on the engine thread, which must never block: count them, wake the caller once.
    left = [count]
    done = threading.Event()
    stamps: list[list[float]] = [[] for _ in range(count)]
    submitted = [0.0] * count

    def sink_for(index: int):  # type: ignore[no-untyped-def]
        def sink(text: str, final: bool, reason: str, usage: dict) -> None:
            if final:
                left[0] -= 1
                if left[0] == 0:
                    done.set()
            else:
                stamps[index].append(time.perf_counter())

        return sink

    started = time.perf_counter()
    for i in range(count):
        prompt = generator.prompt_ids(f"Write a story about a robot named Unit {i}.", [])
        submitted[i] = time.perf_counter()
        engine.submit(GenRequest(prompt_ids=prompt, max_tokens=tokens, on_event=sink_for(i), ignore_eos=True))
    if not done.wait(600):
        raise RuntimeError("streams did not finish within 10 minutes")
    elapsed = time.perf_counter() - started
    ttft = [(s[0] - t0) * 1000 for s, t0 in zip(stamps, submitted, strict=True) if s]
    itl = [(b - a) * 1000 for s in stamps for a, b in zip(s, s[1:], strict=False)]
    return {"elapsed": elapsed, "tokens": count * tokens, "ttft": ttft, "itl": itl}  # type: ignore[dict-item]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", default="1,4,16,32,64")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--device", default="auto")
    opts = parser.parse_args()
    counts = [int(c) for c in opts.streams.split(",")]
    backend = select_backend(opts.device)
    path, name = models.resolve("default", models.DEFAULT_GENERATE)  # type: ignore[misc]
    generator = load_generator(backend, path, name)
    weight_bytes = sum(
        int(a.nbytes)
        for a in [
            generator.model.embed,
            generator.model.head_t,
            *[w for layer in generator.model.layers for w in layer.values()],
        ]
    )
    # A decode step reads every weight once, except the embedding table (one row per token).
    step_bytes = weight_bytes - int(generator.model.embed.nbytes)
    bandwidth = copy_bandwidth_gbs(backend.xp, backend)
    roofline = bandwidth * 1e9 / step_bytes
    engine = Engine(
        generator.model,
        generator.tokenizer,
        generator.stop_ids,
        max_batch=max(counts),
        kv_blocks=max(64, max(counts) * 6),
        block_size=32,
        max_context=2048,
    )
    engine.start()
    rows, under_32 = [], None
    try:
        run_streams(engine, generator, 2, 4)  # warm up
        for count in counts:
            result = run_streams(engine, generator, count, opts.tokens)
            rate = result["tokens"] / result["elapsed"]
            rows.append(
                {
                    "streams": count,
                    "tokens/s": rate,
                    "x batch 1": 0.0,
                    "ttft p50 ms": percentile(result["ttft"], 50),
                    "itl p50 ms": percentile(result["itl"], 50),
                }
            )
            if count == 32:
                under_32 = result
    finally:
        engine.stop()
    for row in rows:
        row["x batch 1"] = row["tokens/s"] / rows[0]["tokens/s"]
    extra = {
        "device": backend.name,
        "copy_bandwidth_gbs": bandwidth,
        "decode_step_bytes": step_bytes,
        "roofline_tokens_s_batch1": roofline,
        "batch1_of_roofline": rows[0]["tokens/s"] / roofline,
    }
    if under_32 is not None:
        extra |= {
            "ttft_ms_32": {"p50": percentile(under_32["ttft"], 50), "p99": percentile(under_32["ttft"], 99)},
            "itl_ms_32": {"p50": percentile(under_32["itl"], 50), "p99": percentile(under_32["itl"], 99)},
        }
    embed_path, embed_name = models.resolve("default", models.DEFAULT_EMBED)  # type: ignore[misc]
    embedder = BertEmbedder(backend, embed_path, embed_name)
    texts = [f"sentence number {i} about agents and tasks" for i in range(32)]
    for batch in (1, 32):
        embedder.embed(texts[:batch])
        started, calls = time.perf_counter(), 0
        while time.perf_counter() - started < 2.0:
            embedder.embed(texts[:batch])
            calls += 1
        extra[f"embeddings_per_s_batch{batch}"] = calls * batch / (time.perf_counter() - started)
    report(
        "inference", f"SmolLM2-135M on {backend.name}: {opts.tokens} tokens per stream, greedy", rows, extra
    )
    print(
        f"copy bandwidth {bandwidth:.1f} GB/s; a decode step reads {step_bytes / 1e6:.0f} MB -> roofline "
        f"{roofline:.1f} tokens/s at batch 1; measured {rows[0]['tokens/s'] / roofline:.0%} of it"
    )
    one, many = extra["embeddings_per_s_batch1"], extra["embeddings_per_s_batch32"]
    print(f"embeddings/s: batch 1 {one:.0f}, batch 32 {many:.0f}")
    if under_32 is not None:
        print(f"under 32 streams: ttft {extra['ttft_ms_32']}, itl {extra['itl_ms_32']}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
