"""Models from a local Hugging Face directory: config.json, safetensors weights (one file or an
index of shards), tokenizer.json, and tokenizer_config.json's chat template. Llama-family
(llama, mistral) and GPT-2 checkpoints.

Llama weights are renamed to the GGUF names `LlamaModel` takes; GPT-2's keep their own names
(without the `transformer.` prefix) for `GPT2Model`. Hugging Face keeps q/k rows in the
rotate-half order our RoPE uses, so unlike a GGUF file nothing is un-permuted. bfloat16 tensors (the
usual format of released checkpoints) are widened to float32 here: NumPy has no bfloat16, so the
safetensors header is read for their place and dtype and the bits are shifted into float32.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from services.inference.llama import LlamaConfig

SUPPORTED = ("llama", "mistral", "gpt2")
PER_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOP_LEVEL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def _gguf_name(name: str) -> str | None:
    if name in TOP_LEVEL:
        return TOP_LEVEL[name]
    parts = name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in PER_LAYER:
        return f"blk.{parts[2]}.{PER_LAYER[parts[3]]}"
    return None


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of one .safetensors file as float32 (bfloat16 and float16 widened)."""
    from safetensors.numpy import load_file  # noqa: PLC0415

    try:
        return {k: v.astype(np.float32, copy=False) for k, v in load_file(str(path)).items()}
    except (TypeError, ValueError):  # a dtype NumPy cannot hold: read the raw bytes ourselves
        pass
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        data = raw[base + start : base + end]
        dtype = info["dtype"]
        if dtype == "BF16":
            bits = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        else:
            array = np.frombuffer(data, dtype={"F32": "<f4", "F16": "<f2"}[dtype]).astype(np.float32)
        tensors[name] = array.reshape(info["shape"])
    return tensors


def _weight_files(path: Path) -> list[str]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return ["model.safetensors"]


def load_hf_dir(path: Path) -> tuple[str, LlamaConfig, dict[str, np.ndarray], dict[str, Any]]:
    """(model family, config, float32 weights, what the tokenizer side needs)."""
    config_json = json.loads((path / "config.json").read_text())
    model_type = config_json.get("model_type")
    if model_type not in SUPPORTED:
        raise ValueError(f"{path.name}: model_type {model_type!r} is not one of {', '.join(SUPPORTED)}")
    if model_type == "gpt2":
        config, weights = _gpt2(path, config_json)
    else:
        config, weights = _llama(path, config_json)
    tokenizer_config = path / "tokenizer_config.json"
    meta = {
        "chat_template": (
            json.loads(tokenizer_config.read_text()).get("chat_template") or ""
            if tokenizer_config.exists()
            else ""
        ),
        "eos_token_id": _eos_ids(path, config_json),
    }
    return ("gpt2" if model_type == "gpt2" else "llama"), config, weights, meta


def _gpt2(path: Path, config_json: dict[str, Any]) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    if config_json.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"{path.name}: activation {config_json['activation_function']!r}: only gelu_new")
    weights: dict[str, np.ndarray] = {}
    for file in _weight_files(path):
        for name, tensor in read_safetensors(path / file).items():
            name = name.removeprefix("transformer.")
            if not name.endswith((".attn.bias", ".attn.masked_bias")) and name != "lm_head.weight":
                weights[name] = tensor  # skipped: the causal-mask buffers, and the tied head
    dim = int(config_json["n_embd"])
    config = LlamaConfig(
        vocab_size=int(config_json["vocab_size"]),
        dim=dim,
        n_layers=int(config_json["n_layer"]),
        n_heads=int(config_json["n_head"]),
        n_kv_heads=int(config_json["n_head"]),
        ffn_dim=int(config_json.get("n_inner") or 4 * dim),
        rope_theta=0.0,  # no rotary embedding: positions are learned
        norm_eps=float(config_json.get("layer_norm_epsilon", 1e-5)),
        context_length=int(config_json.get("n_positions") or config_json.get("n_ctx") or 1024),
    )
    missing = [n for n in ("wte.weight", "wpe.weight", "ln_f.weight") if n not in weights]
    if missing:
        raise ValueError(f"{path.name}: weights missing: {', '.join(missing)}")
    return config, weights


def _llama(path: Path, config_json: dict[str, Any]) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    if config_json.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{path.name}: hidden_act {config_json['hidden_act']!r}: only silu (SwiGLU)")
    if config_json.get("rope_scaling"):
        raise ValueError(f"{path.name}: rope_scaling is not supported")
    if config_json.get("attention_bias") or config_json.get("mlp_bias"):
        raise ValueError(f"{path.name}: attention or MLP biases are not supported")
    weights: dict[str, np.ndarray] = {}
    for file in _weight_files(path):
        for name, tensor in read_safetensors(path / file).items():
            target = _gguf_name(name)
            if target is not None:
                weights[target] = tensor
    if config_json.get("tie_word_embeddings", False):
        weights.pop("output.weight", None)
    heads = int(config_json["num_attention_heads"])
    config = LlamaConfig(
        vocab_size=int(config_json["vocab_size"]),
        dim=int(config_json["hidden_size"]),
        n_layers=int(config_json["num_hidden_layers"]),
        n_heads=heads,
        n_kv_heads=int(config_json.get("num_key_value_heads") or heads),
        ffn_dim=int(config_json["intermediate_size"]),
        rope_theta=float(config_json.get("rope_theta", 10000.0)),
        norm_eps=float(config_json.get("rms_norm_eps", 1e-5)),
        context_length=int(config_json.get("max_position_embeddings", 2048)),
    )
    missing = [n for n in ("token_embd.weight", "output_norm.weight") if n not in weights]
    if missing:
        raise ValueError(f"{path.name}: weights missing: {', '.join(missing)}")
    return config, weights


def _eos_ids(path: Path, config_json: dict[str, Any]) -> list[int]:
    generation = path / "generation_config.json"
    value = json.loads(generation.read_text()).get("eos_token_id") if generation.exists() else None
    if value is None:
        value = config_json.get("eos_token_id")
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]
