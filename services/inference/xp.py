"""The array-module shim: CuPy when a CUDA device really works, NumPy otherwise, one code path.

`cupy.cuda.is_available()` is not enough: without NVRTC or a usable driver the first kernel fails.
So the probe compiles and runs a small elementwise kernel and checks its answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    xp: ModuleType
    name: str  # "cuda:0 (NVIDIA H100 ...)" or "cpu"
    is_gpu: bool

    def to_host(self, array: Any) -> np.ndarray:
        return array.get() if self.is_gpu else array

    def asarray(self, array: Any, dtype: Any = None) -> Any:
        return self.xp.asarray(array, dtype=dtype)

    def synchronize(self) -> None:
        if self.is_gpu:
            self.xp.cuda.Stream.null.synchronize()


def _probe_cupy() -> Backend | None:
    try:
        import cupy  # noqa: PLC0415 - optional extra
    except ImportError:
        return None
    try:
        x = cupy.arange(16, dtype=cupy.float32)
        y = cupy.ElementwiseKernel("float32 a", "float32 b", "b = a * 2.0f + 1.0f", "agentmesh_probe")(x)
        if not bool((y.get() == np.arange(16, dtype=np.float32) * 2 + 1).all()):
            log.warning("CuPy probe kernel gave a wrong answer; using NumPy")
            return None
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        return Backend(cupy, f"cuda:{cupy.cuda.Device().id} ({name})", True)
    except Exception as exc:  # noqa: BLE001 - any CUDA failure means: no usable GPU here
        log.info("CuPy present but no usable CUDA device (%s); using NumPy", exc)
        return None


def select_backend(prefer: str = "auto") -> Backend:
    """`auto`: CuPy if a kernel runs, else NumPy. `cpu`: NumPy. `cuda`: CuPy or an error."""
    if prefer not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {prefer!r}")
    if prefer != "cpu":
        backend = _probe_cupy()
        if backend is not None:
            return backend
        if prefer == "cuda":
            raise RuntimeError("device=cuda was asked for, but no CUDA device runs a CuPy kernel here")
    return Backend(np, "cpu", False)
