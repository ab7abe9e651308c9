"""`x @ w.T` for the linear layers, with each weight in PyTorch's (out, in) layout.

On the GPU this is one cuBLAS call whatever the batch. On the CPU, OpenBLAS packs the whole weight
into its own blocked layout on every GEMM call with more than one row of x: at 2 to 8 rows that copy
costs more than the product, so a decode step at batch 4 took 2-3x a step at batch 1 though it
reads the same weights (docs/benchmarks.md). Agents that sample a few candidates at once live at
exactly those batch sizes.

So small passes on the CPU go to a Numba kernel (cpu_kernels.py) that walks the weight's rows once,
taking each row's dot product with every row of x while the row is in cache: no packing, and the
weights are read from memory once per call whatever the row count. At more rows the arithmetic
dominates and OpenBLAS's blocked kernels win; those go to BLAS.

The choice is made once per forward pass, for all of its products, head included: a pass that used
both would have Numba's threads and OpenBLAS's spinning against each other (cpu_kernels.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.inference.xp import Backend

# Passes of up to this many new tokens use the kernels. On 2 Haswell cores with SmolLM2's shapes the
# kernel takes a decode step's products in 12-18 ms at 1 to 4 rows and 52 ms at 12, where OpenBLAS
# took 21 ms at 1 row, 46-50 ms at 2 to 8, and 59 ms at 12 (scripts/bench/products.py).
KERNEL_MAX_ROWS = 12

Product = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class Products:
    """How a model multiplies by its weights on one backend."""

    blas: Product
    kernel: Product | None  # the CPU kernel, where the model computes in float32 on the CPU

    def kernel_pass(self, rows: int) -> bool:
        """Whether a forward pass of `rows` new tokens runs on the CPU kernels."""
        return self.kernel is not None and rows <= KERNEL_MAX_ROWS


def products_for(backend: Backend, dtype: Any) -> Products:
    if backend.is_gpu:
        return Products(_matmul_t, None)
    if dtype != np.float32:
        return Products(_blas_product, None)
    from services.inference import cpu_kernels  # noqa: PLC0415 - Numba only for a CPU model

    threads = _blas_threads()

    def kernel_product(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        cpu_kernels.use_threads(threads)
        out = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)
        cpu_kernels.dot_rows(np.ascontiguousarray(x), w, out)
        return out

    return Products(_blas_product, kernel_product)


def _matmul_t(x: Any, w: Any) -> Any:
    return x @ w.T


def _blas_product(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    # Asked this way round, OpenBLAS packs x, the small operand, and not the weight: 5-15% faster than
    # x @ w.T from 16 to 256 rows. The result is a transposed view; the array code after it takes it
    # as it is (copying it to C order cost up to a third more at 256 rows).
    return (w @ x.T).T


def _blas_threads() -> int:
    """The kernels run on as many threads as BLAS is limited to: one setting governs both."""
    from threadpoolctl import threadpool_info  # noqa: PLC0415

    blas = [pool["num_threads"] for pool in threadpool_info() if pool.get("user_api") == "blas"]
    return max(blas, default=1)
