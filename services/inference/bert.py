"""A BERT-family encoder for embeddings (all-MiniLM-L6-v2 and its kind): safetensors weights,
`tokenizer.json`, mean pooling over the attention mask, L2-normalised, over the array shim."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from services.inference.xp import Backend

MAX_TOKENS = 256


class BertEmbedder:
    def __init__(self, backend: Backend, directory: Path, name: str = "") -> None:
        from safetensors.numpy import load_file  # noqa: PLC0415

        self.backend = backend
        self.name = name or directory.name
        config = json.loads((directory / "config.json").read_text())
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.dim = int(config["hidden_size"])
        raw = load_file(str(directory / "model.safetensors"))
        xp = backend.xp
        # Checkpoints name their tensors with or without the `bert.` prefix.
        weights = {k.removeprefix("bert."): xp.asarray(v, dtype=xp.float32) for k, v in raw.items()}
        # Linear weights transposed once to (in, out), contiguous, the layout x @ w reads best.
        for name in [k for k, v in weights.items() if k.endswith(".weight") and v.ndim == 2]:
            if not name.startswith("embeddings."):
                weights[name + "_t"] = xp.ascontiguousarray(weights.pop(name).T)
        self.w = weights
        self.layers = int(config["num_hidden_layers"])
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_padding()  # the shipped file pads every input to 128
        self.tokenizer.enable_truncation(
            max_length=min(MAX_TOKENS, int(config.get("max_position_embeddings", 512)))
        )

    def _ln(self, x: Any, prefix: str) -> Any:
        xp = self.backend.xp
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return (x - mean) / xp.sqrt(var + self.eps) * self.w[prefix + ".weight"] + self.w[prefix + ".bias"]

    def _dense(self, x: Any, prefix: str) -> Any:
        # One (tokens of every text, in) @ (in, out) product. A 3-D x would make matmul loop over
        # the texts, one small GEMM each, with OpenBLAS packing the weights every time.
        flat = x.reshape(-1, x.shape[-1]) @ self.w[prefix + ".weight_t"] + self.w[prefix + ".bias"]
        return flat.reshape(*x.shape[:-1], flat.shape[-1])

    def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """(vectors (n, dim) float32, prompt tokens counted)."""
        xp = self.backend.xp
        encodings = self.tokenizer.encode_batch(texts)
        length = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), length), dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.float32)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1.0
        ids_x, mask_x = xp.asarray(ids), xp.asarray(mask)
        w = self.w
        x = (
            w["embeddings.word_embeddings.weight"][ids_x]
            + w["embeddings.position_embeddings.weight"][xp.arange(length)][None]
            + w["embeddings.token_type_embeddings.weight"][0][None, None]
        )
        x = self._ln(x, "embeddings.LayerNorm")
        n, t, d = x.shape
        hd = d // self.heads
        bias = (1.0 - mask_x)[:, None, None, :] * -1e9
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def heads(y: Any) -> Any:
                return y.reshape(n, t, self.heads, hd).transpose(0, 2, 1, 3)

            q = heads(self._dense(x, p + "attention.self.query"))
            k = heads(self._dense(x, p + "attention.self.key"))
            v = heads(self._dense(x, p + "attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
            scores -= scores.max(axis=-1, keepdims=True)
            probs = xp.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            attended = (probs @ v).transpose(0, 2, 1, 3).reshape(n, t, d)
            x = self._ln(
                x + self._dense(attended, p + "attention.output.dense"), p + "attention.output.LayerNorm"
            )
            inner = self._dense(x, p + "intermediate.dense")
            inner = _gelu(inner, xp)
            x = self._ln(x + self._dense(inner, p + "output.dense"), p + "output.LayerNorm")
        pooled = (x * mask_x[:, :, None]).sum(axis=1) / xp.maximum(mask_x.sum(axis=1, keepdims=True), 1.0)
        pooled /= xp.maximum(xp.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return self.backend.to_host(pooled).astype(np.float32), int(mask.sum())


# Numerical Recipes' erfc Chebyshev fit: erfc(z) = t * exp(-z^2 + P(t)), t = 1 / (1 + z/2), with P's
# coefficients from the highest power of t down to the constant term.
_ERFC_POLY = (
    0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807,
    -0.18628806, 0.09678418, 0.37409196, 1.00002368, -1.26551223,
)  # fmt: skip


def _erf(x: Any, xp: Any) -> Any:
    """erf to float32 precision (fractional error < 1.2e-7), in plain array operations, so NumPy
    and CuPy share it. Written in place: on a batch of texts the temporaries of a plain expression
    cost more than the arithmetic."""
    z = xp.abs(x)
    t = z * 0.5
    t += 1.0
    xp.reciprocal(t, out=t)
    poly = t * _ERFC_POLY[0]
    for coefficient in _ERFC_POLY[1:-1]:
        poly += coefficient
        poly *= t
    poly += _ERFC_POLY[-1]
    z *= z
    poly -= z
    xp.exp(poly, out=poly)
    poly *= t  # erfc(|x|)
    poly *= -1.0
    poly += 1.0  # erf(|x|)
    return xp.copysign(poly, x, out=poly)


def _gelu(x: Any, xp: Any) -> Any:
    """Exact GELU, x * (1 + erf(x / sqrt 2)) / 2, in place on a fresh array."""
    out = _erf(x * (1.0 / math.sqrt(2.0)), xp)
    out += 1.0
    out *= x
    out *= 0.5
    return out
