"""The same engine on CUDA through CuPy. Skipped cleanly where no CUDA device runs a kernel."""

from __future__ import annotations

import threading

import pytest

from services.inference import models
from services.inference.engine import GenRequest
from services.inference.generator import load_generator
from services.inference.xp import select_backend
from tests.component.support import make_engine

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def backend():  # type: ignore[no-untyped-def]
    found = select_backend("auto")
    if not found.is_gpu:
        pytest.skip("no usable CUDA device (CuPy missing or its probe kernel did not run)")
    return found


def test_generation_on_the_gpu_matches_the_answer(backend) -> None:  # type: ignore[no-untyped-def]
    path, name = models.resolve("default", models.DEFAULT_GENERATE)  # type: ignore[misc]
    generator = load_generator(backend, path, name)
    engine = make_engine(generator, max_batch=8, kv_blocks=128)
    engine.start()
    try:
        texts, done = [], threading.Event()

        def sink(text: str, final: bool, reason: str, usage: dict) -> None:
            if final:
                done.set()
            else:
                texts.append(text)

        engine.submit(
            GenRequest(
                prompt_ids=generator.prompt_ids("What is the capital of France?", []),
                max_tokens=24,
                on_event=sink,
            )
        )
        assert done.wait(120)
        assert "Paris" in "".join(texts)
    finally:
        engine.stop()
