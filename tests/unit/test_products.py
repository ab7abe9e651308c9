"""products.py: `x @ w.T` by the small-batch kernel and by BLAS gives BLAS's answer to float32 accuracy,
on every path: the kernel's four-row blocks and its leftover rows, one thread and several, views."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from services.inference import products
from services.inference.xp import select_backend

# Odd sizes on purpose: no dimension a multiple of the SIMD width or of the kernel's four rows.
INNER, OUTER = 77, 131


def reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (x.astype(np.float64) @ w.astype(np.float64).T).astype(np.float32)


@pytest.fixture(scope="module")
def weight() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((OUTER, INNER), dtype=np.float32)


@pytest.mark.parametrize("parallel", [False, True], ids=["one thread", "threads"])
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 8, 11])
def test_kernel_matches_blas(weight: np.ndarray, rows: int, parallel: bool) -> None:
    x = np.random.default_rng(rows).standard_normal((rows, INNER), dtype=np.float32)
    out = np.full((rows, OUTER), np.nan, dtype=np.float32)
    products._kernel(parallel)(x, weight, out)
    np.testing.assert_allclose(out, reference(x, weight), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows", [1, products.KERNEL_MAX_ROWS, products.KERNEL_MAX_ROWS + 1, 64])
def test_cpu_product_on_both_sides_of_the_switch(weight: np.ndarray, rows: int, threads: int) -> None:
    with threadpool_limits(limits=threads):
        product = products.product_for(select_backend("cpu"))
        x = np.random.default_rng(rows).standard_normal((rows, INNER), dtype=np.float32)
        got = product(x, weight)
    assert got.shape == (rows, OUTER) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference(x, weight), rtol=1e-5, atol=1e-4)


def test_cpu_product_takes_views_and_other_dtypes(weight: np.ndarray) -> None:
    product = products.product_for(select_backend("cpu"))
    wide = np.random.default_rng(2).standard_normal((3, INNER * 2), dtype=np.float32)
    view = wide[:, ::2]  # not contiguous: the kernel gets a contiguous copy
    np.testing.assert_allclose(product(view, weight), reference(view, weight), rtol=1e-5, atol=1e-4)
    doubles = view.astype(np.float64)  # not float32: BLAS, in float64
    got = product(doubles, weight.astype(np.float64))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, doubles @ weight.astype(np.float64).T, rtol=1e-12)
