"""A Llama-family decoder (RMSNorm, rotary embeddings, grouped-query attention, SwiGLU) over the
array-module shim, with a paged KV cache: fixed-size blocks from a free list, as vLLM does.

`forward` takes any mix of sequences, each contributing some new tokens (a whole prompt when it
prefills, one token when it decodes): the linear layers run on all new tokens of the batch at once,
attention runs per sequence over its cached keys. It returns the logits of each sequence's last
token. Nothing here knows about requests, sampling or threads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.inference.products import products_for
from services.inference.xp import Backend


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    rope_theta: float
    norm_eps: float
    context_length: int

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


class KVCache:
    """Blocks of `block_size` positions for every layer; sequences own lists of block ids."""

    def __init__(
        self, backend: Backend, config: LlamaConfig, n_blocks: int, block_size: int, dtype: Any
    ) -> None:
        xp = backend.xp
        shape = (config.n_layers, n_blocks, config.n_kv_heads, block_size, config.head_dim)
        self.k = xp.zeros(shape, dtype=dtype)
        self.v = xp.zeros(shape, dtype=dtype)
        self.block_size = block_size
        self.n_blocks = n_blocks
        self.free: list[int] = list(range(n_blocks - 1, -1, -1))

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def allocate(self, count: int) -> list[int]:
        if count > len(self.free):
            raise MemoryError("KV cache full")
        return [self.free.pop() for _ in range(count)]

    def release(self, blocks: list[int]) -> None:
        self.free.extend(reversed(blocks))
        blocks.clear()

    @property
    def used_fraction(self) -> float:
        return 1.0 - len(self.free) / self.n_blocks


@dataclass
class SeqSlice:
    """One sequence's part of a forward pass: `tokens` new tokens starting at position `start`."""

    blocks: list[int]
    start: int
    tokens: list[int]


class LlamaModel:
    def __init__(
        self, backend: Backend, config: LlamaConfig, weights: dict[str, np.ndarray], dtype: Any = None
    ) -> None:
        self._place(backend, config, dtype)
        xp = backend.xp
        put = self._put
        self.embed = put(weights["token_embd.weight"])
        # Linear weights stay in (out, in), the layout products.py reads; a tied head is the embedding.
        self.head = put(weights["output.weight"]) if "output.weight" in weights else self.embed
        self.final = {"norm": put(weights["output_norm.weight"])}
        self.layers = []
        for i in range(config.n_layers):
            p = f"blk.{i}."
            qkv = np.concatenate(
                [weights[p + "attn_q.weight"], weights[p + "attn_k.weight"], weights[p + "attn_v.weight"]],
                axis=0,
            )
            gate_up = np.concatenate([weights[p + "ffn_gate.weight"], weights[p + "ffn_up.weight"]], axis=0)
            self.layers.append(
                {
                    "attn_norm": put(weights[p + "attn_norm.weight"]),
                    "qkv": put(qkv),
                    "o": put(weights[p + "attn_output.weight"]),
                    "ffn_norm": put(weights[p + "ffn_norm.weight"]),
                    "gate_up": put(gate_up),
                    "down": put(weights[p + "ffn_down.weight"]),
                }
            )
        half = config.head_dim // 2
        self.inv_freq = xp.asarray(
            1.0 / (config.rope_theta ** (np.arange(half, dtype=np.float64) / half)), dtype=xp.float32
        )

    def _place(self, backend: Backend, config: LlamaConfig, dtype: Any) -> None:
        """Where and in what precision the weights live: float16 on a GPU, float32 on the CPU."""
        self.backend = backend
        self.config = config
        self.dtype = dtype or (backend.xp.float16 if backend.is_gpu else backend.xp.float32)
        self.products = products_for(backend, self.dtype)
        # The product the layers use in the current forward pass (forward sets it, once per pass).
        self.product = self.products.blas
        self.attention_kernel = None
        if self.products.kernel is not None:
            from services.inference.cpu_kernels import decode_attention  # noqa: PLC0415

            self.attention_kernel = decode_attention

    def _put(self, array: np.ndarray, transpose: bool = False) -> Any:
        """A weight on the device in the model's dtype, transposed if the file stores it (in, out)."""
        array = np.ascontiguousarray(array.T if transpose else array)
        return self.backend.xp.asarray(array, dtype=self.dtype)

    def new_cache(self, n_blocks: int, block_size: int) -> KVCache:
        return KVCache(self.backend, self.config, n_blocks, block_size, self.dtype)

    def warm_up(self) -> None:
        """A prefill of two tokens and a decode of one on a scratch cache, so the first request does
        not pay for first use: the CPU kernels' compile (or their load from Numba's cache), BLAS's
        buffers, CuPy's kernel builds. The engine runs it on its own thread (Engine.start)."""
        cache = self.new_cache(1, 4)
        self.forward(cache, [SeqSlice([0], 0, [0, 0])])
        self.forward(cache, [SeqSlice([0], 2, [0])])
        self.backend.synchronize()

    def _rms(self, x: Any, weight: Any) -> Any:
        xp = self.backend.xp
        x32 = x.astype(xp.float32, copy=False)
        scale = 1.0 / xp.sqrt((x32 * x32).mean(axis=-1, keepdims=True) + self.config.norm_eps)
        return (x32 * scale).astype(self.dtype, copy=False) * weight

    def _rope_tables(self, positions: Any) -> tuple[Any, Any]:
        """cos and sin of every new token's rotary angles, (tokens, 1, head_dim/2): made once per
        forward pass, since every layer rotates by the same angles."""
        xp = self.backend.xp
        angles = positions[:, None].astype(xp.float32, copy=False) * self.inv_freq[None, :]
        cos = xp.cos(angles)[:, None, :].astype(self.dtype, copy=False)
        sin = xp.sin(angles)[:, None, :].astype(self.dtype, copy=False)
        return cos, sin

    def _rope(self, x: Any, tables: tuple[Any, Any]) -> Any:
        """Rotate-half rotary embedding; x is (tokens, heads, head_dim)."""
        cos, sin = tables
        half = self.config.head_dim // 2
        x1, x2 = x[..., :half], x[..., half:]
        return self.backend.xp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    def _decode_plan(
        self, cache: KVCache, batch: list[SeqSlice], decoding: list[int], offsets: Any, kernel: bool
    ) -> dict:
        """Block tables and masks for attending all decoding sequences at once (one query each)."""
        xp = self.backend.xp
        lengths = np.array([batch[i].start + 1 for i in decoding])
        width = max(cache.blocks_for(int(n)) for n in lengths)
        table = np.zeros((len(decoding), width), dtype=np.int64)  # padding points at block 0, masked out
        for row, i in enumerate(decoding):
            used = batch[i].blocks[: cache.blocks_for(int(lengths[row]))]
            table[row, : len(used)] = used
        if kernel:  # the kernel reads the blocks in place, each to its own length
            scratch = np.empty((len(decoding), int(lengths.max()) + self.config.head_dim), np.float32)
            return {"rows": offsets[decoding], "table": table, "lengths": lengths, "scratch": scratch}
        masked = np.arange(width * cache.block_size)[None, :] >= lengths[:, None]
        return {
            "rows": xp.asarray(offsets[decoding]),
            "table": xp.asarray(table)[:, None, :],  # (B, 1, blocks), broadcast against heads
            "heads": xp.arange(self.config.n_kv_heads)[None, :, None],  # (1, kv, 1)
            "masked": xp.asarray(masked)[:, None, None, :],
        }

    def _decode_attention(self, plan: dict, q: Any, kc: Any, vc: Any, out: Any, scale: float) -> None:
        """Attention of every decoding sequence: in a kernel pass, cpu_kernels.py's kernel over the
        paged cache in place; otherwise a handful of array operations: gather each one's blocks
        (padded to the longest), mask the padding, softmax, weigh the values."""
        if "scratch" in plan:
            assert self.attention_kernel is not None
            self.attention_kernel(
                q,
                plan["rows"],
                plan["table"],
                plan["lengths"],
                kc,
                vc,
                np.float32(scale),
                out,
                plan["scratch"],
            )
            return
        xp = self.backend.xp
        cfg = self.config
        hd, n_kv = cfg.head_dim, cfg.n_kv_heads
        group = cfg.n_heads // n_kv
        rows, table, heads = plan["rows"], plan["table"], plan["heads"]
        count = table.shape[0]
        # One advanced-indexing gather straight into (B, kv, blocks, slot, hd), so the reshape to
        # (B, kv, L, hd) is a view. Gathering (B, blocks, kv, ...) and transposing after costs a
        # strided copy that took most of the attention time.
        keys = kc[table, heads].reshape(count, n_kv, -1, hd)
        values = vc[table, heads].reshape(count, n_kv, -1, hd)
        queries = q[rows].reshape(count, n_kv, group, hd)
        # (B, kv, g, L)
        scores = (queries @ keys.transpose(0, 1, 3, 2)).astype(xp.float32, copy=False) * scale
        scores = xp.where(plan["masked"], -xp.inf, scores)
        scores -= scores.max(axis=-1, keepdims=True)
        weights = xp.exp(scores)
        weights /= weights.sum(axis=-1, keepdims=True)
        out[rows] = (weights.astype(self.dtype, copy=False) @ values).reshape(count, cfg.n_heads, hd)

    def forward(self, cache: KVCache, batch: list[SeqSlice]) -> Any:
        """Logits (len(batch), vocab) of each sequence's last new token; K/V written to the cache."""
        xp = self.backend.xp
        cfg = self.config
        hd, n_h, n_kv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
        group = n_h // n_kv
        bs = cache.block_size
        all_tokens = [t for s in batch for t in s.tokens]
        positions = xp.asarray(np.concatenate([np.arange(s.start, s.start + len(s.tokens)) for s in batch]))
        offsets = np.cumsum([0] + [len(s.tokens) for s in batch])
        x = self._embed(xp.asarray(all_tokens), positions)
        position_state = self._position_state(positions)
        # Where each new token's K/V go: (block, slot) per token.
        slots = np.concatenate([np.arange(s.start, s.start + len(s.tokens)) for s in batch])
        block_ids = np.concatenate(
            [np.asarray(s.blocks)[(np.arange(s.start, s.start + len(s.tokens)) // bs)] for s in batch]
        )
        block_ids_x, slot_x = xp.asarray(block_ids), xp.asarray(slots % bs)
        scale = 1.0 / math.sqrt(hd)
        decoding = [i for i, s in enumerate(batch) if len(s.tokens) == 1]
        prefilling = [i for i, s in enumerate(batch) if len(s.tokens) > 1]
        # One way of multiplying for the whole pass, head included (products.py says why).
        kernel_pass = self.products.kernel_pass(len(all_tokens))
        self.product = self.products.kernel if kernel_pass else self.products.blas  # type: ignore[assignment]
        plan = self._decode_plan(cache, batch, decoding, offsets, kernel_pass) if decoding else None
        for layer_index, layer in enumerate(self.layers):
            h = self._norm(x, layer, "attn_norm")
            qkv = self._linear(h, layer, "qkv")
            q = qkv[:, : n_h * hd].reshape(-1, n_h, hd)
            k = qkv[:, n_h * hd : (n_h + n_kv) * hd].reshape(-1, n_kv, hd)
            v = qkv[:, (n_h + n_kv) * hd :].reshape(-1, n_kv, hd)
            q, k = self._position(q, k, position_state)
            kc, vc = cache.k[layer_index], cache.v[layer_index]
            kc[block_ids_x, :, slot_x, :] = k
            vc[block_ids_x, :, slot_x, :] = v
            out = xp.empty_like(q)
            if plan is not None:
                self._decode_attention(plan, q, kc, vc, out, scale)
            for i in prefilling:
                seq = batch[i]
                lo, hi = offsets[i], offsets[i + 1]
                total = seq.start + len(seq.tokens)
                used = seq.blocks[: cache.blocks_for(total)]
                # (blocks, kv, bs, hd) -> (kv, blocks*bs, hd), cut to the live length
                used_x = xp.asarray(used)[None, :]
                heads = xp.arange(n_kv)[:, None]
                keys = kc[used_x, heads].reshape(n_kv, -1, hd)[:, :total]
                values = vc[used_x, heads].reshape(n_kv, -1, hd)[:, :total]
                qs = q[lo:hi].reshape(hi - lo, n_kv, group, hd).transpose(1, 2, 0, 3)  # (kv, g, t, hd)
                scores = (qs @ keys[:, None].transpose(0, 1, 3, 2)).astype(
                    xp.float32
                ) * scale  # (kv, g, t, total)
                if hi - lo > 1:  # causal within the new tokens
                    query_pos = np.arange(seq.start, total)[:, None]
                    mask = np.arange(total)[None, :] > query_pos
                    scores = xp.where(xp.asarray(mask)[None, None], -xp.inf, scores)
                scores -= scores.max(axis=-1, keepdims=True)
                weights = xp.exp(scores)
                weights /= weights.sum(axis=-1, keepdims=True)
                attended = weights.astype(self.dtype, copy=False) @ values[:, None]  # (kv, g, t, hd)
                out[lo:hi] = attended.transpose(2, 0, 1, 3).reshape(hi - lo, n_h, hd)
            x = x + self._linear(out.reshape(-1, n_h * hd), layer, "o")
            x = x + self._mlp(self._norm(x, layer, "ffn_norm"), layer)
        last = xp.asarray(offsets[1:] - 1)
        h = self._norm(x[last], self.final, "norm")
        return self.product(h, self.head).astype(xp.float32, copy=False)

    # -- the parts a family changes (GPT-2 overrides them in gpt2.py) ---------------------------

    def _embed(self, tokens: Any, positions: Any) -> Any:
        return self.embed[tokens]

    def _norm(self, x: Any, params: dict[str, Any], name: str) -> Any:
        return self._rms(x, params[name])

    def _linear(self, x: Any, params: dict[str, Any], name: str) -> Any:
        return self.product(x, params[name])

    def _position_state(self, positions: Any) -> Any:
        """What `_position` needs for this pass's tokens, computed once for all layers."""
        return self._rope_tables(positions)

    def _position(self, q: Any, k: Any, state: Any) -> tuple[Any, Any]:
        return self._rope(q, state), self._rope(k, state)

    def _mlp(self, h: Any, layer: dict[str, Any]) -> Any:
        xp = self.backend.xp
        ffn = self.config.ffn_dim
        gate_up = self.product(h, layer["gate_up"])
        gate, up = gate_up[:, :ffn], gate_up[:, ffn:]
        gate32 = gate.astype(xp.float32, copy=False)
        act = (gate32 / (1.0 + xp.exp(-gate32))).astype(self.dtype, copy=False) * up
        return self.product(act, layer["down"])
