"""Our NumPy engine against Hugging Face transformers on the same weights.

The reference numbers are in tests/fixtures/golden.json, made once by scripts/make_golden.py (its
docstring says how to run it again: it needs torch and transformers, which the project does not
install). transformers loads the same GGUF file and dequantizes it with the same gguf-py, so both
sides compute with identical float32 weights; what differs is only the order of float operations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.inference import models
from services.inference.bert import BertEmbedder
from services.inference.generator import load_generator
from services.inference.llama import SeqSlice
from services.inference.xp import select_backend

GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "golden.json").read_text())
LOGIT_TOLERANCE = 1e-4  # absolute, float32
COSINE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def generator():  # type: ignore[no-untyped-def]
    path, name = models.resolve("default", models.DEFAULT_GENERATE)  # type: ignore[misc]
    assert path.name == GOLDEN["generate_model"]
    return load_generator(select_backend("cpu"), path, name)


@pytest.mark.parametrize("case", GOLDEN["logits"], ids=lambda c: c["prompt"][:20])
def test_top_logits_match_transformers(generator, case: dict) -> None:  # type: ignore[no-untyped-def]
    ours = generator.tokenizer.encode(case["prompt"], add_special_tokens=False).ids
    assert ours == case["ids"], "the tokenizer rebuilt from GGUF disagrees with transformers'"
    cache = generator.model.new_cache(8, 32)
    blocks = cache.allocate(cache.blocks_for(len(ours)))
    logits = np.asarray(generator.model.forward(cache, [SeqSlice(blocks, 0, ours)])[0])
    expected = np.asarray(case["top_logits"], dtype=np.float32)
    got = logits[case["top_ids"]]
    assert int(np.argmax(logits)) == case["top_ids"][0]
    assert np.max(np.abs(got - expected)) <= LOGIT_TOLERANCE, np.max(np.abs(got - expected))


def test_embeddings_match_transformers_mean_pooling() -> None:
    path, name = models.resolve("default", models.DEFAULT_EMBED)  # type: ignore[misc]
    embedder = BertEmbedder(select_backend("cpu"), path, name)
    vectors, _ = embedder.embed(GOLDEN["embeddings"]["sentences"])
    reference = np.asarray(GOLDEN["embeddings"]["vectors"], dtype=np.float32)
    cosines = (vectors * reference).sum(axis=1)
    assert np.all(1.0 - cosines <= COSINE_TOLERANCE), cosines
