"""The Numba kernel behind products.py's small batches, in a module of its own so that only a CPU
model pays for importing Numba, and so Numba can cache the compiled code on disk (it caches only
module-level functions).

out[m, n] = dot(x[m], w[n]) for C-contiguous float32 x (M, K), w (N, K), out (M, N). Each weight
row is read from memory once and dotted with every row of x while it is in cache. `fastmath` lets
LLVM split each dot product's sum over SIMD lanes; the result differs from BLAS's in the last bits,
as BLAS's own kernels differ from each other.

Each is compiled on its first call (about a second) and loaded from Numba's cache after that.
"""

from __future__ import annotations

import numba
import numpy as np


def _dot_rows(x: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:
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


_OPTIONS = {"fastmath": True, "nogil": True, "cache": True}
dot_rows_serial = numba.njit(**_OPTIONS)(_dot_rows)  # prange runs as range
dot_rows_parallel = numba.njit(parallel=True, **_OPTIONS)(_dot_rows)
