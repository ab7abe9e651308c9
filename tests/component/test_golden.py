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


TINY = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "golden_tiny.json").read_text())


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A random-weight Llama written as a Hugging Face directory (GQA, untied head, float32)."""
    from tests.fixtures.tiny_models import write_tiny_llama

    return load_generator(select_backend("cpu"), write_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama"))


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A random-weight GPT-2 written as a Hugging Face directory (tied head, float32)."""
    from tests.fixtures.tiny_models import write_tiny_gpt2

    return load_generator(select_backend("cpu"), write_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "gpt2"))


def _last_logits(generator, ids: list[int]) -> np.ndarray:  # type: ignore[no-untyped-def]
    cache = generator.model.new_cache(8, 16)
    blocks = cache.allocate(cache.blocks_for(len(ids)))
    return np.asarray(generator.model.forward(cache, [SeqSlice(blocks, 0, ids)])[0])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("index", range(len(TINY["llama"])))
def test_a_hugging_face_directory_matches_transformers(request, family: str, index: int) -> None:  # type: ignore[no-untyped-def]
    case = TINY[family][index]
    logits = _last_logits(request.getfixturevalue(f"tiny_{family}"), case["ids"])
    expected = np.asarray(case["logits"], dtype=np.float32)
    assert logits.shape == expected.shape
    assert np.max(np.abs(logits - expected)) <= LOGIT_TOLERANCE, np.max(np.abs(logits - expected))


@pytest.mark.parametrize("index", range(len(TINY["gpt2"])))
def test_a_gpt2_gguf_file_matches_transformers(tmp_path: Path, index: int) -> None:
    """The tiny GPT-2 as llama.cpp's converter writes it (its names, (out, in) projections): the
    same logits as transformers on the Hugging Face original."""
    from tests.fixtures.tiny_models import write_tiny_gpt2_gguf

    generator = load_generator(select_backend("cpu"), write_tiny_gpt2_gguf(tmp_path / "gpt2.gguf"))
    case = TINY["gpt2"][index]
    logits = _last_logits(generator, case["ids"])
    expected = np.asarray(case["logits"], dtype=np.float32)
    assert np.max(np.abs(logits - expected)) <= LOGIT_TOLERANCE, np.max(np.abs(logits - expected))
    assert generator.tokenizer.decode(generator.tokenizer.encode("héllo").ids) == "héllo"
    assert generator.stop_ids >= {257}


def test_a_float16_gpt2_gguf_file_is_widened(tmp_path: Path) -> None:
    """Matrices stored in float16 come back as float32: the logits move only by the rounding."""
    from tests.fixtures.tiny_models import write_tiny_gpt2_gguf

    generator = load_generator(select_backend("cpu"), write_tiny_gpt2_gguf(tmp_path / "gpt2.gguf", f16=True))
    case = TINY["gpt2"][0]
    difference = np.max(np.abs(_last_logits(generator, case["ids"]) - np.asarray(case["logits"])))
    assert 0 < difference < 2e-2, difference


def test_decoding_token_by_token_gives_the_prefill_logits(tiny_gpt2) -> None:  # type: ignore[no-untyped-def]
    """The KV cache path (one token per step) against one prefill of the whole prompt."""
    ids = TINY["gpt2"][1]["ids"]
    cache = tiny_gpt2.model.new_cache(8, 4)  # small blocks: the prompt spans several
    blocks = cache.allocate(cache.blocks_for(len(ids)))
    stepped = None
    for position, token in enumerate(ids):
        stepped = np.asarray(tiny_gpt2.model.forward(cache, [SeqSlice(blocks, position, [token])])[0])
    assert np.max(np.abs(stepped - _last_logits(tiny_gpt2, ids))) <= LOGIT_TOLERANCE


def test_the_tiny_llama_directory_also_loads_its_tokenizer_and_stops(tiny_llama) -> None:  # type: ignore[no-untyped-def]
    ids = tiny_llama.tokenizer.encode("Hello", add_special_tokens=False).ids
    assert ids == [ord(c) for c in "Hello"]  # byte-level, no merges: one token per byte
    assert 257 in tiny_llama.stop_ids  # config.json's eos_token_id


def test_a_bfloat16_checkpoint_is_widened_like_torch_does(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    from services.inference.hf import read_safetensors
    from tests.fixtures.tiny_models import write_tiny_llama

    path = write_tiny_llama(tmp_path / "llama")
    original = load_file(str(path / "model.safetensors"))
    # Rewrite it as bfloat16 by hand (NumPy cannot), the way released checkpoints usually come.
    import struct

    header, blobs, offset = {}, [], 0
    for name, array in original.items():
        bits = (array.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {
            "dtype": "BF16",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(bits)],
        }
        blobs.append(bits)
        offset += len(bits)
    head = json.dumps(header).encode()
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    widened = read_safetensors(path / "model.safetensors")
    for name, array in original.items():
        truncated = (array.view(np.uint32) & 0xFFFF0000).view(np.float32)
        assert np.array_equal(widened[name], truncated), name
