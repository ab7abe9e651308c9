#!/usr/bin/env python3
"""The peer for `inference.py`: Hugging Face transformers (torch on the CPU) on the same GGUF file,
the same prompt token ids and the same greedy decoding.

Run by `inference.py` in an interpreter that has torch, transformers, accelerate and gguf (the
project's `peer` extra, or any venv: `--peer-python`). Reads a JSON job on stdin, writes JSON
figures on stdout. Embeddings/s are measured with sentence-transformers when that is installed
too.
Exits 3 when torch or transformers is missing, so the caller can skip it cleanly.

transformers batches statically: a batch of N prompts is left-padded to the longest and decoded
together until every row has its tokens; that is its `generate`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

try:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
except ImportError as exc:
    print(f"transformers peer unavailable: {exc}", file=sys.stderr)
    raise SystemExit(3) from None


def generate(model, prompts: list[list[int]], tokens: int, pad_id: int) -> tuple[float, list[int]]:  # type: ignore[no-untyped-def]
    """Seconds to make `tokens` tokens for every prompt at once; the first row's new tokens."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=tokens,
            min_new_tokens=tokens,  # end-of-text ignored, as the engine's streams do
            pad_token_id=pad_id,
        )
    return time.perf_counter() - started, out[0, width:].tolist()


def embeddings(directory: str, texts: list[str]) -> dict:
    """Embeddings/s at batch 1 and 32 with sentence-transformers on the same MiniLM directory, and
    the first text's vector (for the caller to compare with its own)."""
    try:
        import sentence_transformers
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        return {"skipped": f"sentence-transformers unavailable: {exc}"}
    model = SentenceTransformer(directory, device="cpu")
    rates = {}
    for batch in (1, 32):
        model.encode(texts[:batch], batch_size=batch)
        started, calls = time.perf_counter(), 0
        while time.perf_counter() - started < 2.0:
            model.encode(texts[:batch], batch_size=batch)
            calls += 1
        rates[str(batch)] = calls * batch / (time.perf_counter() - started)
    first = model.encode(texts[:1], normalize_embeddings=True)[0]
    return {
        "sentence_transformers": sentence_transformers.__version__,
        "per_s": rates,
        "first": [float(v) for v in first],
    }


def main() -> None:
    job = json.load(sys.stdin)
    torch.set_num_threads(job["threads"])
    path = Path(job["gguf"])
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.eval()
    prompts: list[list[int]] = job["prompts"]
    generate(model, prompts[:2], 4, job["pad_id"])  # warm up
    rates, first_tokens = {}, []
    for count in job["counts"]:
        elapsed, first = generate(model, prompts[:count], job["tokens"], job["pad_id"])
        rates[str(count)] = count * job["tokens"] / elapsed
        if count == 1:
            first_tokens = first
    json.dump(
        {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
            "tokens_per_s": rates,
            "batch1_tokens": first_tokens,
            "embeddings": embeddings(job["embed_dir"], job["texts"]) if job.get("embed_dir") else {},
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
