"""The inference engine in-process on NumPy with the real embedded models (no sockets)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from services.inference import models
from services.inference.bert import BertEmbedder
from services.inference.engine import Engine, GenRequest
from services.inference.generator import Generator
from services.inference.sampling import sample
from services.inference.xp import select_backend
from tests.component.support import default_generator, make_engine


@pytest.fixture(scope="module")
def generator() -> Generator:
    return default_generator()


@pytest.fixture(scope="module")
def engine(generator: Generator):  # type: ignore[no-untyped-def]
    engine = make_engine(generator, max_batch=17, kv_blocks=160, max_context=1024)
    engine.start()
    yield engine
    engine.stop()


class Collector:
    def __init__(self) -> None:
        self.texts: list[str] = []
        self.final: tuple[str, dict] | None = None
        self.done = threading.Event()
        self.first = threading.Event()

    def __call__(self, text: str, final: bool, reason: str, usage: dict) -> None:
        if final:
            self.final = (reason, usage)
            self.done.set()
        else:
            self.texts.append(text)
            self.first.set()

    @property
    def text(self) -> str:
        return "".join(self.texts)


def generate(engine: Engine, generator: Generator, prompt: str, **params) -> Collector:  # type: ignore[no-untyped-def]
    sink = Collector()
    params.setdefault("max_tokens", 12)
    engine.submit(GenRequest(prompt_ids=generator.prompt_ids(prompt, []), on_event=sink, **params))
    return sink


def wait(*sinks: Collector) -> None:
    for sink in sinks:
        assert sink.done.wait(120), "generation did not finish"


def test_greedy_answer_is_right_and_stops_at_end_of_turn(engine: Engine, generator: Generator) -> None:
    sink = generate(engine, generator, "What is the capital of France?", max_tokens=24)
    wait(sink)
    assert "Paris" in sink.text
    reason, usage = sink.final  # type: ignore[misc]
    assert reason == "stop" and usage["completion_tokens"] <= 24 and usage["prompt_tokens"] > 10


def test_batched_sequences_decode_exactly_as_alone(engine: Engine, generator: Generator) -> None:
    """Continuous batching must not change results: greedy output alone == output beside others."""
    alone = generate(engine, generator, "Name three colours.")
    wait(alone)
    together = [
        generate(engine, generator, prompt)
        for prompt in ("Count to five.", "Name three colours.", "Say hello in French.", "What is 2+2?")
    ]
    wait(*together)
    assert together[1].text == alone.text
    assert all(s.final[0] in ("stop", "length") for s in together)  # type: ignore[index]


def test_greedy_alone_equals_greedy_among_sixteen_joining_and_leaving(
    engine: Engine, generator: Generator
) -> None:
    import time

    alone = generate(engine, generator, "What is the tallest mountain?", max_tokens=12)
    wait(alone)
    others = []
    for i in range(16):  # join at different steps, leave at different steps (max_tokens 2..17)
        others.append(generate(engine, generator, f"Tell me about the number {i}.", max_tokens=2 + i))
        if i == 7:
            target = generate(engine, generator, "What is the tallest mountain?", max_tokens=12)
        time.sleep(0.03)
    wait(target, *others)
    assert target.text == alone.text


def test_cancelling_one_of_sixteen_leaves_the_others_unaffected(engine: Engine, generator: Generator) -> None:
    prompts = [f"List {i + 2} animals." for i in range(16)]

    def batch(cancel_index: int | None) -> list[Collector]:
        sinks = [Collector() for _ in prompts]
        ids = [
            engine.submit(GenRequest(prompt_ids=generator.prompt_ids(p, []), max_tokens=10, on_event=s))
            for p, s in zip(prompts, sinks, strict=True)
        ]
        if cancel_index is not None:
            assert sinks[cancel_index].first.wait(60)
            steps_at_cancel = engine.steps
            engine.cancel(ids[cancel_index])
            assert sinks[cancel_index].done.wait(60)
            assert engine.steps - steps_at_cancel <= 1  # gone within one decode step of the cancel
        wait(*sinks)
        return sinks

    reference = batch(None)
    with_cancel = batch(5)
    assert with_cancel[5].final[0] == "cancelled"  # type: ignore[index]
    kept = [s.text for i, s in enumerate(with_cancel) if i != 5]
    assert kept == [s.text for i, s in enumerate(reference) if i != 5]


def test_joining_mid_flight_keeps_results(engine: Engine, generator: Generator) -> None:
    first_alone = generate(engine, generator, "Describe the sea.", max_tokens=20)
    wait(first_alone)
    long_one = generate(engine, generator, "Describe the sea.", max_tokens=20)
    assert long_one.first.wait(60)
    joiner = generate(engine, generator, "Name a fruit.", max_tokens=8)  # prefills while the other decodes
    wait(long_one, joiner)
    assert long_one.text == first_alone.text


def test_max_tokens_and_stop_strings(engine: Engine, generator: Generator) -> None:
    limited = generate(engine, generator, "Write a long story about a dragon.", max_tokens=5)
    wait(limited)
    assert limited.final[0] == "length" and limited.final[1]["completion_tokens"] == 5  # type: ignore[index]
    free_before = engine.prefix.available
    stopped = generate(
        engine, generator, "Count from 1 to 10, separated by commas.", max_tokens=40, stop=["4"]
    )
    wait(stopped)
    assert stopped.final[0] == "stop" and "4" not in stopped.text and "3" in stopped.text  # type: ignore[index]
    assert engine.prefix.available == free_before


def test_cancel_frees_the_sequence_before_the_next_step(engine: Engine, generator: Generator) -> None:
    free_before = engine.prefix.available
    sink = Collector()
    request_id = engine.submit(
        GenRequest(
            prompt_ids=generator.prompt_ids("Tell me a long story.", []), max_tokens=400, on_event=sink
        )
    )
    assert sink.first.wait(60)
    engine.cancel(request_id)
    wait(sink)
    assert sink.final[0] == "cancelled"  # type: ignore[index]
    assert sink.final[1]["completion_tokens"] < 400  # type: ignore[index]
    assert engine.prefix.available == free_before
    engine.cancel(request_id)  # idempotent


def test_seeded_sampling_repeats(engine: Engine, generator: Generator) -> None:
    runs = [
        generate(engine, generator, "Invent a name for a cat.", temperature=0.9, top_p=0.9, top_k=40, seed=7)
        for _ in range(2)
    ]
    wait(*runs)
    assert runs[0].text == runs[1].text


def test_too_long_a_prompt_is_an_error_not_a_hang(engine: Engine, generator: Generator) -> None:
    sink = Collector()
    engine.submit(GenRequest(prompt_ids=[42] * 1100, max_tokens=4, on_event=sink))
    wait(sink)
    assert sink.final[0] == "error"  # type: ignore[index]


def test_sampling_rules() -> None:
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 5.0, 1.0, 4.9])
    assert sample(logits, 0.0, 0, 1.0, rng) == 1
    assert {sample(logits, 1.0, 1, 1.0, rng) for _ in range(20)} == {1}  # top-k 1 is greedy
    assert {sample(logits, 1.0, 0, 0.5, rng) for _ in range(50)} <= {1, 3}  # top-p keeps the head


def test_tokenizer_round_trip_and_control_tokens(generator: Generator) -> None:
    text = "Hello, world! 12345 — ünïcödé"
    ids = generator.tokenizer.encode(text, add_special_tokens=False).ids
    assert generator.tokenizer.decode(ids) == text
    assert generator.tokenizer.encode("<|im_start|>", add_special_tokens=False).ids == [1]
    assert generator.prompt_ids("hi", [])[:1] == [1]  # the chat template starts a turn


def test_cpu_backend_and_cuda_refusal() -> None:
    assert select_backend("cpu").xp is np
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError):
            select_backend("cuda")


def test_embeddings_are_normalised_and_meaningful() -> None:
    path, name = models.resolve("default", models.DEFAULT_EMBED)  # type: ignore[misc]
    embedder = BertEmbedder(select_backend("cpu"), path, name)
    vectors, tokens = embedder.embed(
        ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
    )
    assert vectors.shape == (3, 384) and tokens > 10
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    # sentence-transformers' published score for this pair with all-MiniLM-L6-v2 is 0.7553
    assert abs(sims[0, 1] - 0.7553) < 0.01
    assert sims[0, 1] > sims[0, 2]


def test_chunked_prefill_gives_the_same_tokens_as_one_pass(engine: Engine, generator: Generator) -> None:
    """A prompt longer than the per-step prefill budget is fed in chunks, between decode steps of the
    others; the result matches an engine that prefills it in one pass."""
    prompt = "Summarise this list: " + ", ".join(f"item {i}" for i in range(120))
    assert len(generator.prompt_ids(prompt, [])) > engine.max_prefill_tokens
    chunked = generate(engine, generator, prompt, max_tokens=8)
    wait(chunked)
    whole_engine = make_engine(generator, max_prefill_tokens=4096, max_context=1024)
    whole_engine.start()
    try:
        whole = generate(whole_engine, generator, prompt, max_tokens=8)
        wait(whole)
    finally:
        whole_engine.stop()
    assert chunked.text == whole.text and chunked.text


# --- prefix caching ------------------------------------------------------------------------------


def _story_prompt(generator: Generator, n: int) -> list[int]:
    spec = "Here is a specification. " + " ".join(f"Rule {i}: keep item {i} in order." for i in range(n))
    return generator.prompt_ids(spec + " Now write the first line of the program.", [])


def _run(engine: Engine, prompts: list[list[int]], max_tokens: int = 8) -> list[Collector]:
    sinks = []
    for prompt in prompts:
        sink = Collector()
        engine.submit(GenRequest(prompt_ids=prompt, max_tokens=max_tokens, on_event=sink))
        sinks.append(sink)
    wait(*sinks)
    return sinks


def test_a_repeated_prompt_reuses_its_blocks_and_decodes_the_same(generator: Generator) -> None:
    prompt = _story_prompt(generator, 12)
    cached = make_engine(generator, max_batch=4)
    plain = make_engine(generator, max_batch=4, prefix_caching=False)
    for e in (cached, plain):
        e.start()
    try:
        first, second = _run(cached, [prompt]), _run(cached, [prompt])
        (reference,) = _run(plain, [prompt])
    finally:
        cached.stop()
        plain.stop()
    size = cached.cache.block_size
    assert first[0].final[1]["cached_prompt_tokens"] == 0  # type: ignore[index]
    # every full block but the one holding the last prompt token, which is always computed
    assert second[0].final[1]["cached_prompt_tokens"] == (len(prompt) - 1) // size * size  # type: ignore[index]
    assert first[0].text == second[0].text == reference.text and reference.text


def test_candidates_sent_together_compute_their_shared_prompt_once(generator: Generator) -> None:
    """Four requests with one prompt arrive at once: one computes it, three wait a step and share."""
    prompt = _story_prompt(generator, 10)
    engine = make_engine(generator, max_batch=4)
    engine.start()
    try:
        sinks = _run(engine, [prompt] * 4)
    finally:
        engine.stop()
    cached = sorted(s.final[1]["cached_prompt_tokens"] for s in sinks)  # type: ignore[index]
    size = engine.cache.block_size
    assert cached == [0] + [(len(prompt) - 1) // size * size] * 3
    assert len({s.text for s in sinks}) == 1  # greedy: the same answer four times


def test_a_shared_prefix_with_different_tails_gives_each_its_own_answer(generator: Generator) -> None:
    base = "Here is a specification. " + " ".join(f"Rule {i}: keep item {i} in order." for i in range(10))
    prompts = [generator.prompt_ids(base + tail, []) for tail in (" What is 2 + 2?", " Name a colour.")]
    engine = make_engine(generator, max_batch=4)
    plain = make_engine(generator, max_batch=4, prefix_caching=False)
    for e in (engine, plain):
        e.start()
    try:
        _run(engine, [prompts[0]])
        shared = _run(engine, [prompts[1]])
        (alone,) = _run(plain, [prompts[1]])
    finally:
        engine.stop()
        plain.stop()
    assert shared[0].final[1]["cached_prompt_tokens"] > 0  # type: ignore[index]
    assert shared[0].text == alone.text


def test_idle_cached_blocks_are_reused_when_the_cache_runs_dry(generator: Generator) -> None:
    """Cached blocks nobody uses never make a request wait: they are the first to go when the free
    list is empty, and the engine serves prompts that need the whole cache."""
    engine = make_engine(generator, max_batch=2, kv_blocks=24, block_size=16, max_context=384)
    engine.start()
    try:
        for n in range(6):  # 6 prompts of ~10 blocks, different from their first block: > 24 blocks
            text = f"Task {n}. " + " ".join(f"Step {i} of {n}." for i in range(25))
            prompt = generator.prompt_ids(text, [])
            (sink,) = _run(engine, [prompt], max_tokens=4)
            assert sink.final[0] == "length", sink.final  # type: ignore[index]
        assert engine.prefix.available == engine.cache.n_blocks  # nothing held by finished requests
        assert engine.prefix.cached_blocks > 0
    finally:
        engine.stop()


def test_a_prefix_already_cached_holds_nobody_back(generator: Generator) -> None:
    """Requests that share a cached system prompt but differ after it are all admitted at once:
    only a prefix someone is computing right now is worth waiting for."""
    system = "You are a careful assistant. " + " ".join(f"Rule {i}: answer briefly." for i in range(8))
    engine = make_engine(generator, max_batch=8, kv_blocks=128)
    engine.start()
    try:
        def ask(question: str) -> list[int]:
            return generator.prompt_ids("", [("system", system), ("user", question)])

        _run(engine, [ask("Say hi.")], max_tokens=1)  # warms the cache
        steps_before = engine.steps
        prompts = [ask(f"What is {n} + {n}?") for n in range(4)]
        sinks = _run(engine, prompts, max_tokens=1)
        steps = engine.steps - steps_before
    finally:
        engine.stop()
    assert all(s.final[1]["cached_prompt_tokens"] > 0 for s in sinks)  # type: ignore[index]
    assert steps <= 2, f"{steps} steps for 4 one-token requests: some waited for others"
