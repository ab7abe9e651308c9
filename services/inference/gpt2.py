"""The GPT-2 family on the same engine as Llama: learned position embeddings instead of RoPE,
LayerNorm with bias instead of RMSNorm, biases on every projection, full multi-head attention, a GELU
(tanh) MLP, and the head tied to the token embedding. Attention, the paged KV cache and batching
are LlamaModel's; only the parts that differ are overridden.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from services.inference.llama import LlamaConfig, LlamaModel
from services.inference.xp import Backend

# Our name for each per-layer tensor (LlamaModel's hooks take w (out, in) and bias w_b) -> GPT-2's.
LAYER = {
    "attn_norm": "ln_1.weight",
    "attn_norm_b": "ln_1.bias",
    "qkv": "attn.c_attn.weight",
    "qkv_b": "attn.c_attn.bias",
    "o": "attn.c_proj.weight",
    "o_b": "attn.c_proj.bias",
    "ffn_norm": "ln_2.weight",
    "ffn_norm_b": "ln_2.bias",
    "fc": "mlp.c_fc.weight",
    "fc_b": "mlp.c_fc.bias",
    "proj": "mlp.c_proj.weight",
    "proj_b": "mlp.c_proj.bias",
}
TRANSPOSED = {"qkv", "o", "fc", "proj"}


class GPT2Model(LlamaModel):
    def __init__(
        self, backend: Backend, config: LlamaConfig, weights: dict[str, np.ndarray], dtype: Any = None
    ) -> None:
        self._place(backend, config, dtype)
        put = self._put
        self.embed = put(weights["wte.weight"])
        self.positions = put(weights["wpe.weight"])
        if "lm_head.weight" in weights:  # a file that stores the head apart (GGUF's output.weight)
            self.head = put(weights["lm_head.weight"])
        else:
            self.head = self.embed  # tied
        self.final = {"norm": put(weights["ln_f.weight"]), "norm_b": put(weights["ln_f.bias"])}
        self.layers = []
        for i in range(config.n_layers):
            p = f"h.{i}."
            # Conv1D weights are stored (in, out): transposed once to the (out, in) the products take.
            self.layers.append(
                {
                    ours: put(weights[p + theirs], transpose=ours in TRANSPOSED)
                    for ours, theirs in LAYER.items()
                }
            )

    def _embed(self, tokens: Any, positions: Any) -> Any:
        return self.embed[tokens] + self.positions[positions]

    def _norm(self, x: Any, params: dict[str, Any], name: str) -> Any:
        xp = self.backend.xp
        x32 = x.astype(xp.float32, copy=False)
        centered = x32 - x32.mean(axis=-1, keepdims=True)
        scale = 1.0 / xp.sqrt((centered * centered).mean(axis=-1, keepdims=True) + self.config.norm_eps)
        return (centered * scale).astype(self.dtype, copy=False) * params[name] + params[name + "_b"]

    def _linear(self, x: Any, params: dict[str, Any], name: str) -> Any:
        return self.product(x, params[name]) + params[name + "_b"]

    def _position_state(self, positions: Any) -> Any:
        return None

    def _position(self, q: Any, k: Any, state: Any) -> tuple[Any, Any]:
        return q, k  # positions are in the embeddings

    def _mlp(self, h: Any, layer: dict[str, Any]) -> Any:
        xp = self.backend.xp
        u = self._linear(h, layer, "fc").astype(xp.float32, copy=False)
        # GPT-2's "gelu_new": the tanh approximation.
        act = 0.5 * u * (1.0 + xp.tanh(math.sqrt(2.0 / math.pi) * (u + 0.044715 * u * u * u)))
        return self._linear(act.astype(self.dtype, copy=False), layer, "proj")
