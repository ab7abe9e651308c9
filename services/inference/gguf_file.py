"""Generation models from GGUF files, the format of llama.cpp: the Llama family and GPT-2.

Every tensor is dequantized to float32 with the `gguf` package (F32, F16, and llama.cpp's quantized
types alike). Weights are then put into the names and layout each model class takes:
- Llama keeps the GGUF names `LlamaModel` uses. Only the q/k rows are un-permuted: llama.cpp's
  converter interleaves them for its RoPE layout, and we use rotate-half RoPE, as the original
  weights do.
- GPT-2 gets the Hugging Face names `GPT2Model` uses. Its projections are transposed back to
  Conv1D's (in, out), since llama.cpp's converter stores them as (out, in).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from services.inference.llama import LlamaConfig

FAMILIES = ("llama", "gpt2")

# llama.cpp's GPT-2 tensor -> (GPT2Model's name, transpose?) ; per layer, `{i}` is the block index.
GPT2_TOP = {
    "token_embd.weight": ("wte.weight", False),
    "position_embd.weight": ("wpe.weight", False),
    "output_norm.weight": ("ln_f.weight", False),
    "output_norm.bias": ("ln_f.bias", False),
    "output.weight": ("lm_head.weight", False),  # absent when the head is tied
}
GPT2_LAYER = {
    "attn_norm.weight": ("ln_1.weight", False),
    "attn_norm.bias": ("ln_1.bias", False),
    "attn_qkv.weight": ("attn.c_attn.weight", True),
    "attn_qkv.bias": ("attn.c_attn.bias", False),
    "attn_output.weight": ("attn.c_proj.weight", True),
    "attn_output.bias": ("attn.c_proj.bias", False),
    "ffn_norm.weight": ("ln_2.weight", False),
    "ffn_norm.bias": ("ln_2.bias", False),
    "ffn_up.weight": ("mlp.c_fc.weight", True),
    "ffn_up.bias": ("mlp.c_fc.bias", False),
    "ffn_down.weight": ("mlp.c_proj.weight", True),
    "ffn_down.bias": ("mlp.c_proj.bias", False),
}


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's converter, which interleaves the rows of attn_q/attn_k for its RoPE layout;
    we use rotate-half RoPE, as the original weights do."""
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def load_gguf(path: Path) -> tuple[str, LlamaConfig, dict[str, np.ndarray], dict[str, Any]]:
    """(family, config, float32 weights, the raw tokenizer and general metadata fields)."""
    import gguf  # noqa: PLC0415 - only the inference worker needs it
    from gguf import quants  # noqa: PLC0415

    reader = gguf.GGUFReader(str(path))

    def field(name: str, default: Any = None) -> Any:
        value = reader.fields.get(name)
        return default if value is None else value.contents()

    arch = field("general.architecture")
    if arch not in FAMILIES:
        raise ValueError(f"{path.name}: architecture {arch!r} is not one of {', '.join(FAMILIES)}")
    tensors = {
        t.name: quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        for t in reader.tensors
    }
    meta = {name: field(name) for name in reader.fields if name.startswith(("tokenizer.", "general."))}
    if arch == "gpt2":
        config, weights = _gpt2(path, field, tensors)
    else:
        config, weights = _llama(field, tensors)
    return arch, config, weights, meta


def _llama(field: Any, weights: dict[str, np.ndarray]) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    config = LlamaConfig(
        vocab_size=int(field("llama.vocab_size", weights["token_embd.weight"].shape[0])),
        dim=int(field("llama.embedding_length")),
        n_layers=int(field("llama.block_count")),
        n_heads=int(field("llama.attention.head_count")),
        n_kv_heads=int(field("llama.attention.head_count_kv", field("llama.attention.head_count"))),
        ffn_dim=int(field("llama.feed_forward_length")),
        rope_theta=float(field("llama.rope.freq_base", 10000.0)),
        norm_eps=float(field("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        context_length=int(field("llama.context_length", 2048)),
    )
    for layer in range(config.n_layers):
        for name, heads in (("attn_q", config.n_heads), ("attn_k", config.n_kv_heads)):
            key = f"blk.{layer}.{name}.weight"
            weights[key] = unpermute_qk(weights[key], heads)
    return config, weights


def _gpt2(
    path: Path, field: Any, tensors: dict[str, np.ndarray]
) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    dim = int(field("gpt2.embedding_length"))
    config = LlamaConfig(
        vocab_size=int(tensors["token_embd.weight"].shape[0]),
        dim=dim,
        n_layers=int(field("gpt2.block_count")),
        n_heads=int(field("gpt2.attention.head_count")),
        n_kv_heads=int(field("gpt2.attention.head_count")),
        ffn_dim=int(field("gpt2.feed_forward_length", 4 * dim)),
        rope_theta=0.0,  # no rotary embedding: positions are learned
        norm_eps=float(field("gpt2.attention.layer_norm_epsilon", 1e-5)),
        context_length=int(field("gpt2.context_length", 1024)),
    )
    names = dict(GPT2_TOP)
    for i in range(config.n_layers):
        names |= {f"blk.{i}.{ours}": (f"h.{i}.{theirs}", t) for ours, (theirs, t) in GPT2_LAYER.items()}
    weights: dict[str, np.ndarray] = {}
    for name, (target, transpose) in names.items():
        if name in tensors:
            weights[target] = np.ascontiguousarray(tensors[name].T) if transpose else tensors[name]
    optional = {"output.weight"}
    missing = [name for name, (target, _) in names.items() if target not in weights and name not in optional]
    if missing:
        raise ValueError(f"{path.name}: tensors missing: {', '.join(missing[:5])}")
    return config, weights
