#!/usr/bin/env python3
"""The inference engine on this machine: tokens/s at 1..64 concurrent streams, time to first token
and inter-token latency under 32 streams, embeddings/s, and the memory-bandwidth roofline.

In-process (no gRPC): the engine's own throughput. Streams generate exactly --tokens tokens each
(end-of-text ignored) from different prompts, greedy. "tokens/s" is end to end: all streams arrive
at once, so it includes prefilling every prompt; "decode tokens/s" is the steady state, streams
over the median inter-token time. The roofline for one stream is the measured
copy bandwidth over the bytes of weights one decode step reads (the issue's definition), and a
stricter one from the bandwidth of reading alone on every engine thread.

    .venv/bin/python scripts/bench/inference.py [--streams 1,4,16,32,64 --tokens 32]
        [--peer-python /path/to/venv/bin/python]

The peer, Hugging Face transformers on torch (CPU), runs in the same run on the same GGUF file and
prompt token ids with as many threads as our BLAS has (`peer_transformers.py`). It needs an
interpreter with torch, transformers, accelerate and gguf: this one if `pip install .[peer]` was
run, else the one `--peer-python` names; without one it is skipped and says so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import threadpoolctl
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


def read_bandwidth_gbs(xp, backend, threads: int, mib: int = 512) -> float:  # type: ignore[no-untyped-def]
    """Reading alone, on every thread the engine uses: what a decode step does with its weights. On
    the CPU, `copyto` runs on one thread and also writes, so this is the stricter roofline there."""
    src = xp.ones(mib * 1024 * 1024 // 4, dtype=xp.float32)
    if backend.is_gpu:
        total = lambda: src.sum()  # noqa: E731
    else:
        import numba  # noqa: PLC0415

        @numba.njit(parallel=True, fastmath=True)
        def parallel_sum(values):  # type: ignore[no-untyped-def]
            total = np.float32(0.0)
            for i in numba.prange(values.shape[0]):
                total += values[i]
            return total

        numba.set_num_threads(threads)
        total = lambda: parallel_sum(src)  # noqa: E731
    total()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        total()
        backend.synchronize()
        best = min(best, time.perf_counter() - started)
    return src.nbytes / best / 1e9


def run_streams(engine: Engine, generator, count: int, tokens: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    # Finals arrive on the engine thread, which must never block: count them, wake the caller once.
    left = [count]
    done = threading.Event()
    stamps: list[list[float]] = [[] for _ in range(count)]
    submitted = [0.0] * count

    texts = [""] * count

    def sink_for(index: int):  # type: ignore[no-untyped-def]
        def sink(text: str, final: bool, reason: str, usage: dict) -> None:
            texts[index] += text
            if final:
                left[0] -= 1
                if left[0] == 0:
                    done.set()
            else:
                stamps[index].append(time.perf_counter())

        return sink

    started = time.perf_counter()
    for i in range(count):
        prompt = stream_prompt(generator, i)
        submitted[i] = time.perf_counter()
        engine.submit(GenRequest(prompt_ids=prompt, max_tokens=tokens, on_event=sink_for(i), ignore_eos=True))
    if not done.wait(600):
        raise RuntimeError("streams did not finish within 10 minutes")
    elapsed = time.perf_counter() - started
    ttft = [(s[0] - t0) * 1000 for s, t0 in zip(stamps, submitted, strict=True) if s]
    itl = [(b - a) * 1000 for s in stamps for a, b in zip(s, s[1:], strict=False)]
    return {"elapsed": elapsed, "tokens": count * tokens, "ttft": ttft, "itl": itl, "text0": texts[0]}  # type: ignore[dict-item]


def stream_prompt(generator, index: int) -> list[int]:  # type: ignore[no-untyped-def]
    return generator.prompt_ids(f"Write a story about a robot named Unit {index}.", [])


def run_peer(
    python: str,
    gguf: Path,
    prompts: list[list[int]],
    counts: list[int],
    tokens: int,
    pad_id: int,
    embed_dir: Path,
    texts: list[str],
) -> dict | str:
    """The transformers figures, or why there are none."""
    threads = max((info["num_threads"] for info in threadpoolctl.threadpool_info()), default=1)
    job = {
        "gguf": str(gguf),
        "prompts": prompts,
        "counts": counts,
        "tokens": tokens,
        "threads": threads,
        "pad_id": pad_id,
        "embed_dir": str(embed_dir),
        "texts": texts,
    }
    peer = Path(__file__).with_name("peer_transformers.py")
    try:
        done = subprocess.run(  # noqa: S603 - our own script, in an interpreter the user named
            [python, str(peer)],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
    except OSError as exc:
        return f"cannot run {python}: {exc}"
    if done.returncode == 3:
        return done.stderr.strip() or "torch or transformers is missing"
    if done.returncode != 0:
        return f"the peer failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", default="1,4,16,32,64")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--no-prefix-caching",
        action="store_true",
        help="compute every prompt in full (the chat template's"
        " system prompt is otherwise shared by every stream after the first)",
    )
    parser.add_argument(
        "--peer-python", default=sys.executable, help="an interpreter with torch and transformers"
    )
    opts = parser.parse_args()
    counts = [int(c) for c in opts.streams.split(",")]
    backend = select_backend(opts.device)
    path, name = models.resolve("default", models.DEFAULT_GENERATE)  # type: ignore[misc]
    generator = load_generator(backend, path, name)
    weight_bytes = sum(
        int(a.nbytes)
        for a in [
            generator.model.embed,
            generator.model.head,
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
        prefix_caching=not opts.no_prefix_caching,
    )
    engine.start()
    rows, under_32, batch1_text = [], None, ""
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
                    # Steady-state decode: every stream makes a token per step of this length.
                    "decode tokens/s": count * 1000 / percentile(result["itl"], 50),
                    "decode x batch 1": 0.0,
                }
            )
            if count == 32:
                under_32 = result
            if count == 1:
                batch1_text = result["text0"]
    finally:
        engine.stop()
    # After the engine: Numba's kernels run slower on a thread once another has launched them first.
    threads = max((info["num_threads"] for info in threadpoolctl.threadpool_info()), default=1)
    read_bandwidth = read_bandwidth_gbs(backend.xp, backend, threads)
    read_roofline = read_bandwidth * 1e9 / step_bytes
    for row in rows:
        row["x batch 1"] = row["tokens/s"] / rows[0]["tokens/s"]
        row["decode x batch 1"] = row["decode tokens/s"] / rows[0]["decode tokens/s"]
    prompts = [stream_prompt(generator, i) for i in range(max(counts))]
    pad_id = min(generator.stop_ids) if generator.stop_ids else 0
    embed_path, embed_name = models.resolve("default", models.DEFAULT_EMBED)  # type: ignore[misc]
    texts = [f"sentence number {i} about agents and tasks" for i in range(32)]
    peer = run_peer(opts.peer_python, path, prompts, counts, opts.tokens, pad_id, embed_path, texts)
    if isinstance(peer, dict):
        for row in rows:
            theirs = peer["tokens_per_s"][str(row["streams"])]
            row["transformers tokens/s"] = theirs
            row["x transformers"] = row["tokens/s"] / theirs
    extra = {
        "device": backend.name,
        "prefix_caching": not opts.no_prefix_caching,
        "copy_bandwidth_gbs": bandwidth,
        "decode_step_bytes": step_bytes,
        "roofline_tokens_s_batch1": roofline,
        "batch1_of_roofline": rows[0]["tokens/s"] / roofline,
        "batch1_decode_of_roofline": rows[0]["decode tokens/s"] / roofline,
        "read_bandwidth_gbs": read_bandwidth,
        "read_roofline_tokens_s_batch1": read_roofline,
        "batch1_of_read_roofline": rows[0]["tokens/s"] / read_roofline,
        "batch1_decode_of_read_roofline": rows[0]["decode tokens/s"] / read_roofline,
    }
    if isinstance(peer, dict):
        same = generator.tokenizer.decode(peer["batch1_tokens"], skip_special_tokens=True) == batch1_text
        extra["peer"] = {k: peer[k] for k in ("torch", "transformers", "threads", "tokens_per_s")}
        extra["peer"]["batch1_text_matches"] = same
    else:
        extra["peer"] = {"skipped": peer}
    if under_32 is not None:
        extra |= {
            "ttft_ms_32": {"p50": percentile(under_32["ttft"], 50), "p99": percentile(under_32["ttft"], 99)},
            "itl_ms_32": {"p50": percentile(under_32["itl"], 50), "p99": percentile(under_32["itl"], 99)},
        }
    embedder = BertEmbedder(backend, embed_path, embed_name)
    for batch in (1, 32):
        embedder.embed(texts[:batch])
        started, calls = time.perf_counter(), 0
        while time.perf_counter() - started < 2.0:
            embedder.embed(texts[:batch])
            calls += 1
        extra[f"embeddings_per_s_batch{batch}"] = calls * batch / (time.perf_counter() - started)
    theirs = peer.get("embeddings", {}) if isinstance(peer, dict) else {}
    if "per_s" in theirs:
        vectors, _ = embedder.embed(texts[:1])
        ours_first = np.asarray(vectors[0], dtype=np.float64)
        cosine = float(ours_first @ np.asarray(theirs["first"]) / np.linalg.norm(theirs["first"]))
        extra["peer_embeddings"] = {
            "sentence_transformers": theirs["sentence_transformers"],
            "per_s": theirs["per_s"],
            "cosine_first_text": cosine,
        }
    report(
        "inference", f"SmolLM2-135M on {backend.name}: {opts.tokens} tokens per stream, greedy", rows, extra
    )
    print(
        f"copy bandwidth {bandwidth:.1f} GB/s; a decode step reads {step_bytes / 1e6:.0f} MB -> roofline "
        f"{roofline:.1f} tokens/s at batch 1; measured {rows[0]['tokens/s'] / roofline:.0%} of it "
        "end to end, "
        f"{rows[0]['decode tokens/s'] / roofline:.0%} in decode steps"
    )
    print(
        f"read bandwidth on {threads} thread(s) {read_bandwidth:.1f} GB/s -> roofline {read_roofline:.1f} "
        f"tokens/s at batch 1; measured {rows[0]['tokens/s'] / read_roofline:.0%} of it end to end, "
        f"{rows[0]['decode tokens/s'] / read_roofline:.0%} in decode steps"
    )
    one, many = extra["embeddings_per_s_batch1"], extra["embeddings_per_s_batch32"]
    print(f"embeddings/s: batch 1 {one:.0f}, batch 32 {many:.0f}")
    if "peer_embeddings" in extra:
        st = extra["peer_embeddings"]
        print(
            f"sentence-transformers {st['sentence_transformers']}: batch 1 {st['per_s']['1']:.0f}/s, "
            f"batch 32 {st['per_s']['32']:.0f}/s; "
            f"cosine of the first text's vectors {st['cosine_first_text']:.6f}"
        )
    elif theirs:
        print(f"embeddings peer skipped: {theirs.get('skipped')}")
    if isinstance(peer, dict):
        agree = "the same text" if extra["peer"]["batch1_text_matches"] else "DIFFERENT text"
        print(
            f"peer: transformers {peer['transformers']} on torch {peer['torch']}, {peer['threads']} threads; "
            f"batch 1 greedy gave {agree} to ours"
        )
    else:
        print(f"peer skipped: {peer}")
    if under_32 is not None:
        print(f"under 32 streams: ttft {extra['ttft_ms_32']}, itl {extra['itl_ms_32']}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
