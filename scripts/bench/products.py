"""The linear layers' products of one decode step of SmolLM2, by batch rows and by method.

Every method computes the same `x @ w.T` over all 30 layers' four weights and the head (what one
decode step multiplies), on the real weights:
- `kernel`: cpu_kernels.py's Numba kernel over (out, in) weights, on as many threads as BLAS;
- `x @ w_t`: OpenBLAS over (in, out) copies, the engine's layout before the kernel;
- `(w @ x.T).T` and `x @ w.T`: OpenBLAS over the (out, in) weights, the two ways it can be asked;
- `engine`: what products.py picks for a pass of that many rows.
Methods are interleaved, best of `--repeats`, so the machine's noise hits all of them alike.

    .venv/bin/python scripts/bench/products.py [--rows 1,2,3,4,6,8,16,32,64 --threads 0 --repeats 7]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import threadpoolctl
from _common import report

from services.inference import cpu_kernels, models, products
from services.inference.generator import load_generator
from services.inference.xp import select_backend


def step_weights(model) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    names = ("qkv", "o", "gate_up", "down")
    return [layer[name] for layer in model.layers for name in names] + [model.head]


def time_step(product: Callable[[np.ndarray, np.ndarray], np.ndarray], inputs: list, weights: list) -> float:
    started = time.perf_counter()
    for x, w in zip(inputs, weights, strict=True):
        product(x, w)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="1,2,3,4,6,8,16,32,64")
    parser.add_argument("--threads", type=int, default=0, help="BLAS and kernel threads (0: all cores)")
    parser.add_argument("--repeats", type=int, default=7)
    opts = parser.parse_args()
    if opts.threads:
        threadpoolctl.threadpool_limits(limits=opts.threads)
    threads = max(info["num_threads"] for info in threadpoolctl.threadpool_info())
    backend = select_backend("cpu")
    path, name = models.resolve("default", models.DEFAULT_GENERATE)  # type: ignore[misc]
    weights = step_weights(load_generator(backend, path, name).model)
    transposed = [np.ascontiguousarray(w.T) for w in weights]  # the old (in, out) copies
    engine = products.products_for(backend, np.float32)
    assert engine.kernel is not None

    def engine_product(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return (engine.kernel if engine.kernel_pass(x.shape[0]) else engine.blas)(x, w)  # type: ignore[misc]

    def kernel(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        cpu_kernels.use_threads(threads)
        out = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)
        cpu_kernels.dot_rows(x, w, out)
        return out

    methods: dict[str, tuple[Callable, list]] = {
        "kernel": (kernel, weights),
        "x @ w_t": (lambda x, wt: x @ wt, transposed),
        "(w @ x.T).T": (lambda x, w: (w @ x.T).T, weights),
        "x @ w.T": (lambda x, w: x @ w.T, weights),
        "engine": (engine_product, weights),
    }
    rng = np.random.default_rng(0)
    rows_out = []
    for rows in [int(r) for r in opts.rows.split(",")]:
        inputs = [rng.standard_normal((rows, w.shape[1]), dtype=np.float32) for w in weights]
        best = dict.fromkeys(methods, float("inf"))
        for _ in range(opts.repeats):
            for label, (product, operands) in methods.items():
                # One step untimed first: OpenBLAS's idle threads spin for a while after a call and
                # take the cores from the next method if it is not BLAS; a real step runs among its own.
                time_step(product, inputs, operands)
                best[label] = min(best[label], time_step(product, inputs, operands))
        row: dict[str, object] = {"rows": rows}
        row.update({f"{label} ms": seconds * 1e3 for label, seconds in best.items()})
        row["old / engine"] = best["x @ w_t"] / best["engine"]
        rows_out.append(row)
    report(
        "products",
        f"one decode step's linear products, SmolLM2-135M, {threads} thread(s), best of {opts.repeats}",
        rows_out,
        {"threads": threads, "kernel_max_rows": products.KERNEL_MAX_ROWS},
    )


if __name__ == "__main__":
    main()
