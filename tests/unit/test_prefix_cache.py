"""The prefix cache's bookkeeping on a tiny KV cache: references, keys, LRU reuse."""

from __future__ import annotations

import pytest

from services.inference.llama import KVCache, LlamaConfig
from services.inference.prefix_cache import PrefixCache
from services.inference.xp import select_backend

CONFIG = LlamaConfig(
    vocab_size=32,
    dim=8,
    n_layers=1,
    n_heads=2,
    n_kv_heads=1,
    ffn_dim=16,
    rope_theta=10000.0,
    norm_eps=1e-5,
    context_length=64,
)


def make(blocks: int = 6, enabled: bool = True) -> PrefixCache:
    backend = select_backend("cpu")
    return PrefixCache(KVCache(backend, CONFIG, blocks, 4, backend.xp.float32), enabled=enabled)


def computed(cache: PrefixCache, prompt: list[int]) -> list[int]:
    """Blocks for `prompt`, as the engine gets them: the cached prefix, then new ones, all keyed."""
    shared = cache.match(prompt)
    blocks = shared + cache.allocate(cache.cache.blocks_for(len(prompt)) - len(shared))
    cache.register(prompt, blocks, len(prompt))
    return blocks


def test_only_full_blocks_before_the_last_token_are_shared() -> None:
    cache = make()
    prompt = list(range(9))  # blocks [0-3] [4-7] [8]
    first = computed(cache, prompt)
    again = cache.match(prompt)
    assert again == first[:2]
    exactly_two_blocks = cache.match(list(range(8)))  # its last token's block is always computed
    assert exactly_two_blocks == first[:1]


def test_a_different_token_anywhere_in_the_prefix_stops_the_match() -> None:
    cache = make()
    first = computed(cache, list(range(12)))
    assert cache.match([0, 1, 2, 3, 4, 5, 99, 7, 8, 9, 10, 11]) == first[:1]
    assert cache.match([99, 1, 2, 3, 4, 5, 6, 7, 8]) == []


def test_blocks_are_freed_only_when_the_last_user_releases_them() -> None:
    cache = make(blocks=6)
    prompt = list(range(9))
    a = computed(cache, prompt)
    b = computed(cache, prompt)  # shares a's first two blocks, has its own third
    assert b[:2] == a[:2] and b[2] != a[2]
    assert cache.available == 6 - 4
    cache.release(a)
    assert cache.available == 6 - 3  # a's last block is free; the shared two are still b's
    cache.release(b)
    assert cache.available == 6
    assert cache.cached_blocks == 2  # idle, kept for the next request with this prefix


def test_idle_blocks_are_reused_oldest_first_and_lose_their_key() -> None:
    cache = make(blocks=4)
    old, new = list(range(5)), list(range(100, 105))
    cache.release(computed(cache, old))  # 1 keyed block idle, 1 free
    cache.release(computed(cache, new))
    assert cache.cached_blocks == 2 and cache.available == 4
    grabbed = cache.allocate(3)  # 2 free ones, then the oldest idle block
    assert cache.match(old) == [] and len(cache.match(new)) == 1
    assert len(set(grabbed)) == 3
    with pytest.raises(MemoryError):
        cache.allocate(1)


def test_disabled_caches_nothing() -> None:
    cache = make(enabled=False)
    blocks = computed(cache, list(range(9)))
    assert cache.match(list(range(9))) == []
    cache.release(blocks)
    assert cache.available == 6 and cache.cached_blocks == 0
