"""The CPU engine's Numba kernels and products.py's choice between them and BLAS: each gives the
array code's answer to float32 accuracy, on every path (the product kernel's four-row blocks and its
leftover rows, one thread and two; decode attention over blocks shared out of order, grouped heads,
sequences of different lengths)."""

from __future__ import annotations

import numpy as np
import pytest

from services.inference import cpu_kernels, products
from services.inference.xp import select_backend

# Odd sizes on purpose: no dimension a multiple of the SIMD width or of the kernel's four rows.
INNER, OUTER = 77, 131


def reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (x.astype(np.float64) @ w.astype(np.float64).T).astype(np.float32)


@pytest.fixture(scope="module")
def weight() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((OUTER, INNER), dtype=np.float32)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 8, 11])
def test_dot_rows_matches_blas(weight: np.ndarray, rows: int, threads: int) -> None:
    x = np.random.default_rng(rows).standard_normal((rows, INNER), dtype=np.float32)
    out = np.full((rows, OUTER), np.nan, dtype=np.float32)
    cpu_kernels.use_threads(threads)
    cpu_kernels.dot_rows(x, weight, out)
    np.testing.assert_allclose(out, reference(x, weight), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rows", [1, products.KERNEL_MAX_ROWS, products.KERNEL_MAX_ROWS + 1, 64])
def test_cpu_products_agree_on_both_sides_of_the_switch(weight: np.ndarray, rows: int) -> None:
    chosen = products.products_for(select_backend("cpu"), np.float32)
    assert chosen.kernel is not None
    assert chosen.kernel_pass(rows) == (rows <= products.KERNEL_MAX_ROWS)
    x = np.random.default_rng(rows).standard_normal((rows, INNER), dtype=np.float32)
    for product in (chosen.kernel, chosen.blas):
        got = product(x, weight)
        assert got.shape == (rows, OUTER) and got.dtype == np.float32
        np.testing.assert_allclose(got, reference(x, weight), rtol=1e-5, atol=1e-4)


def test_kernel_takes_views_and_other_dtypes_go_to_blas(weight: np.ndarray) -> None:
    chosen = products.products_for(select_backend("cpu"), np.float32)
    assert chosen.kernel is not None
    wide = np.random.default_rng(2).standard_normal((3, INNER * 2), dtype=np.float32)
    view = wide[:, ::2]  # not contiguous: the kernel gets a contiguous copy
    np.testing.assert_allclose(chosen.kernel(view, weight), reference(view, weight), rtol=1e-5, atol=1e-4)
    doubles = products.products_for(select_backend("cpu"), np.float64)
    assert doubles.kernel is None and not doubles.kernel_pass(1)
    x64 = view.astype(np.float64)
    got = doubles.blas(x64, weight.astype(np.float64))
    np.testing.assert_allclose(got, x64 @ weight.astype(np.float64).T, rtol=1e-12)


def attention_reference(q, rows, table, lengths, kc, vc, scale):  # type: ignore[no-untyped-def]
    """Plain NumPy in float64, one sequence at a time: gather its positions, softmax, weigh."""
    heads = q.shape[1]
    group = heads // kc.shape[1]
    block_size = kc.shape[2]
    out = {}
    for b, row in enumerate(rows):
        positions = np.arange(lengths[b])
        blocks, slots = table[b, positions // block_size], positions % block_size
        keys = kc[blocks, :, slots].astype(np.float64)  # (length, kv heads, dim)
        values = vc[blocks, :, slots].astype(np.float64)
        for h in range(heads):
            scores = keys[:, h // group] @ q[row, h].astype(np.float64) * scale
            weights = np.exp(scores - scores.max())
            out[row, h] = (weights / weights.sum()) @ values[:, h // group]
    return out


@pytest.mark.parametrize("threads", [1, 2])
def test_decode_attention_matches_a_plain_reference(threads: int) -> None:
    rng = np.random.default_rng(3)
    heads, kv_heads, dim, block_size, n_blocks = 9, 3, 16, 4, 40
    kc = rng.standard_normal((n_blocks, kv_heads, block_size, dim), dtype=np.float32)
    vc = rng.standard_normal((n_blocks, kv_heads, block_size, dim), dtype=np.float32)
    # Lengths of 1, one exactly filling its blocks, and longer ones; blocks in no particular order,
    # the table padded with block 0 past each sequence's own blocks.
    lengths = np.array([1, 8, 13, 3, 21], dtype=np.int64)
    order = rng.permutation(n_blocks)
    width = -(-int(lengths.max()) // block_size)
    table = np.zeros((len(lengths), width), dtype=np.int64)
    taken = 0
    for b, length in enumerate(lengths):
        need = -(-int(length) // block_size)
        table[b, :need] = order[taken : taken + need]
        taken += need
    q = rng.standard_normal((7, heads, dim), dtype=np.float32)  # 7 token rows; 5 of them decode
    rows = np.array([6, 0, 2, 5, 3], dtype=np.int64)
    out = np.full_like(q, np.nan)
    scratch = np.empty((len(rows), int(lengths.max()) + dim), np.float32)
    cpu_kernels.use_threads(threads)
    cpu_kernels.decode_attention(q, rows, table, lengths, kc, vc, np.float32(0.25), out, scratch)
    expected = attention_reference(q, rows, table, lengths, kc, vc, 0.25)
    for (row, h), value in expected.items():
        np.testing.assert_allclose(out[row, h], value, rtol=1e-5, atol=1e-5)
    assert np.isnan(out[[1, 4]]).all()  # rows that do not decode are left alone
