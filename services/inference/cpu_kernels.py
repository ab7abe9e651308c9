"""The CPU engine's Numba kernels, in a module of their own so that only a CPU model pays for
importing Numba, and so Numba can cache the compiled code on disk (it caches only module-level
functions). Each is compiled on its first call (about a second) and loaded from Numba's on-disk
cache after that: beside this file, or in the user's cache directory where this one is read-only.

`fastmath` lets LLVM split sums over SIMD lanes; results differ from NumPy's in the last bits, as
BLAS's own kernels differ from each other.

They split their outer loop over Numba's threads, as many as BLAS is limited to (`use_threads`).
A forward pass runs either these or OpenBLAS, never both (products.py): both thread pools spin for a
while after their work, and in a pass that alternated them each pool's spinning threads took the
cores from the other's work (a step at 32 sequences went from 105 to 280 ms). After an OpenBLAS
pass its threads spin for about 0.1 s, which slows the next two or three kernel passes.
"""

from __future__ import annotations

import math

import numba
import numpy as np


def _dot_rows(x: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:
    """out[m, n] = dot(x[m], w[n]) for C-contiguous float32 x (M, K), w (N, K), out (M, N).

    Each weight row is read from memory once and dotted with every row of x while it is in cache:
    products.py's small batches."""
    rows, inner = x.shape
    for n in numba.prange(w.shape[0]):
        # Four rows of x per pass over the weight row: each weight load feeds four multiply-adds,
        # where one row at a time needs a load of x and a load of w for every one.
        m = 0
        while m + 4 <= rows:
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for k in range(inner):
                wk = w[n, k]
                a0 += x[m, k] * wk
                a1 += x[m + 1, k] * wk
                a2 += x[m + 2, k] * wk
                a3 += x[m + 3, k] * wk
            out[m, n], out[m + 1, n], out[m + 2, n], out[m + 3, n] = a0, a1, a2, a3
            m += 4
        while m < rows:
            total = np.float32(0.0)
            for k in range(inner):
                total += x[m, k] * w[n, k]
            out[m, n] = total
            m += 1


def _decode_attention(
    q: np.ndarray,
    rows: np.ndarray,
    table: np.ndarray,
    lengths: np.ndarray,
    kc: np.ndarray,
    vc: np.ndarray,
    scale: float,
    out: np.ndarray,
    scratch: np.ndarray,
) -> None:
    """Attention of one new token per sequence over its paged K/V, read in place.

    q, out: (tokens, heads, head_dim); rows[b]: sequence b's token row in q; table[b]: its cache
    block ids; lengths[b]: its positions so far, the new one included; kc, vc: one layer's cache,
    (blocks, kv heads, block size, head_dim). Query heads share K/V heads in groups (GQA).
    scratch: float32 (sequences, longest length + head_dim), the caller's, because allocating in
    here (Numba's allocator, per call) made the OpenBLAS calls around it several times slower.

    The array version gathers every sequence's blocks into a padded copy first and masks the
    padding; this reads each position where it lies and stops at the sequence's own length.
    """
    heads, dim = q.shape[1], q.shape[2]
    group = heads // kc.shape[1]
    block_size = kc.shape[2]
    for b in numba.prange(rows.shape[0]):
        row, length = rows[b], lengths[b]
        scores, acc = scratch[b, :length], scratch[b, length : length + dim]
        for h in range(heads):
            kv = h // group
            best = -np.inf
            for p in range(length):
                block, slot = table[b, p // block_size], p % block_size
                total = np.float32(0.0)
                for d in range(dim):
                    total += q[row, h, d] * kc[block, kv, slot, d]
                total *= scale
                scores[p] = total
                best = max(best, total)
            norm = np.float32(0.0)
            for p in range(length):
                weight = np.float32(math.exp(scores[p] - best))
                scores[p] = weight
                norm += weight
            acc[:] = 0.0
            for p in range(length):
                block, slot = table[b, p // block_size], p % block_size
                weight = scores[p] / norm
                for d in range(dim):
                    acc[d] += weight * vc[block, kv, slot, d]
            for d in range(dim):
                out[row, h, d] = acc[d]


def use_threads(threads: int) -> None:
    """Numba's thread count belongs to the thread that launches, so the engine's thread sets it on
    its first call."""
    wanted = max(1, min(threads, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != wanted:
        numba.set_num_threads(wanted)


def _compile(function):  # type: ignore[no-untyped-def]
    # One compiled variant per function: Numba's on-disk cache keys entries by function and
    # signature, not by options, so a serial and a parallel build of one function would share them.
    options = {"parallel": True, "fastmath": True, "nogil": True, "error_model": "numpy"}
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError:  # Numba finds no writable cache directory (a read-only install, no home)
        return numba.njit(cache=False, **options)(function)


dot_rows = _compile(_dot_rows)
decode_attention = _compile(_decode_attention)
