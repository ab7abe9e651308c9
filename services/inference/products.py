"""`x @ w.T` for the linear layers, with each weight in PyTorch's (out, in) layout.

On the GPU this is one cuBLAS call whatever the batch. On the CPU, OpenBLAS packs the whole weight
into its own blocked layout on every GEMM call with more than one row of x: at 2 to 8 rows that copy
costs more than the product, so a decode step at batch 4 took 2-3x a step at batch 1 though it
reads the same weights (docs/benchmarks.md). Agents that sample a few candidates at once live at
exactly those batch sizes.

So small batches on the CPU go to a Numba kernel that walks the weight's rows once, taking each
row's dot product with every row of x while the row is in cache: no packing, and the weights are
read from memory once per call whatever the row count. At more rows the arithmetic dominates and
OpenBLAS's blocked kernels win; those go to BLAS.

The kernel runs on as many threads as BLAS is limited to (threadpoolctl), so the service's
`blas_threads` setting governs both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from services.inference.xp import Backend

log = logging.getLogger(__name__)

# Up to this many rows, the kernel. On 2 Haswell cores with SmolLM2's shapes it takes a decode step's
# products in 17 ms at 1 to 4 rows and 52 ms at 12, where OpenBLAS takes 19-23 ms at 1 row, 40-48 ms
# at 2 to 8, and 56 ms at 12 (scripts/bench/products.py).
KERNEL_MAX_ROWS = 12

Product = Callable[[Any, Any], Any]


def product_for(backend: Backend) -> Product:
    """The function a model calls for `x @ w.T`, chosen once for its backend."""
    if backend.is_gpu:
        return _matmul_t
    threads = _blas_threads()
    kernel = _kernel(parallel=threads > 1)
    set_threads = _thread_setter(threads) if threads > 1 else None

    def cpu_product(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        rows = x.shape[0]
        if rows <= KERNEL_MAX_ROWS and x.dtype == np.float32 and w.dtype == np.float32:
            if set_threads is not None:
                set_threads()
            out = np.empty((rows, w.shape[0]), dtype=np.float32)
            kernel(np.ascontiguousarray(x), w, out)
            return out
        # Asked this way round, OpenBLAS packs x, the small operand, and not the weight: 5-15% faster
        # than x @ w.T from 16 to 256 rows. The result is a transposed view; NumPy takes it as it is.
        return (w @ x.T).T

    return cpu_product


def _matmul_t(x: Any, w: Any) -> Any:
    return x @ w.T


def _blas_threads() -> int:
    from threadpoolctl import threadpool_info  # noqa: PLC0415

    blas = [pool["num_threads"] for pool in threadpool_info() if pool.get("user_api") == "blas"]
    return max(blas, default=1)


def _thread_setter(threads: int) -> Callable[[], None]:
    """Numba's thread count belongs to the calling thread, so it is checked on every call: the
    engine's thread sets it on its first."""
    import numba  # noqa: PLC0415

    wanted = min(threads, numba.config.NUMBA_NUM_THREADS)

    def set_threads() -> None:
        if numba.get_num_threads() != wanted:
            numba.set_num_threads(wanted)

    return set_threads


def _kernel(parallel: bool) -> Callable[[np.ndarray, np.ndarray, np.ndarray], None]:
    from services.inference import small_batch_kernel  # noqa: PLC0415 - Numba only for a CPU model

    return small_batch_kernel.dot_rows_parallel if parallel else small_batch_kernel.dot_rows_serial
