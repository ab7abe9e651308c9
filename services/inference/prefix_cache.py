"""Prefix caching: KV blocks of prompts that later requests with the same prefix use again.

Agents repeat themselves. A codegen attempt and its candidates send the same spec and tests, and a
retry resends the whole conversation so far. A block of `block_size` prompt positions holds the
same K/V for every request whose tokens up to the end of that block are the same, so the engine
computes it once. This is vLLM's automatic prefix caching.

The key of a block is its whole prefix, chained as nested tuples `(key of the block before, tokens
of this block)`. Lookups compare exact tokens, never a hash alone, so a collision cannot hand a
request someone else's K/V.

Every block in the KV cache is in one of three states:
- free, on the cache's free list;
- in use: referenced by running sequences (`_refs`), keyed or not;
- idle: keyed and referenced by nobody. It is kept in LRU order for a later request that shares
  its prefix, and it is reused for new data, oldest first, when the free list runs dry.

Only blocks filled entirely with prompt tokens are keyed. A sequence never writes into such a block
again (its later tokens go to later positions), so sharing one needs no copy.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from services.inference.llama import KVCache

BlockKey = tuple[Any, tuple[int, ...]]


class PrefixCache:
    def __init__(self, cache: KVCache, enabled: bool = True) -> None:
        self.cache = cache
        self.enabled = enabled
        self._by_key: dict[BlockKey, int] = {}
        self._key_of: dict[int, BlockKey] = {}
        self._refs: dict[int, int] = {}
        self._idle: OrderedDict[int, None] = OrderedDict()

    @property
    def block_size(self) -> int:
        return self.cache.block_size

    @property
    def available(self) -> int:
        """Blocks a new sequence can get: free ones and idle cached ones."""
        return len(self.cache.free) + len(self._idle)

    @property
    def used_fraction(self) -> float:
        return 1.0 - self.available / self.cache.n_blocks

    @property
    def cached_blocks(self) -> int:
        return len(self._by_key)

    def keys(self, prompt: list[int], blocks: int) -> list[BlockKey]:
        """The keys of the first `blocks` full blocks of `prompt`."""
        size, key, out = self.block_size, None, []
        for i in range(blocks):
            key = (key, tuple(prompt[i * size : (i + 1) * size]))
            out.append(key)
        return out

    def shareable_blocks(self, prompt: list[int]) -> int:
        """How many leading blocks of `prompt` may come from the cache: full blocks only, and at
        least one prompt token is always left to compute, for the logits of the first new token."""
        return (len(prompt) - 1) // self.block_size if self.enabled else 0

    def match(self, prompt: list[int]) -> list[int]:
        """The cached blocks of the longest cached prefix of `prompt`, each now referenced once more
        by the caller (who must `release` them with the rest of its blocks)."""
        found: list[int] = []
        for key in self.keys(prompt, self.shareable_blocks(prompt)):
            block = self._by_key.get(key)
            if block is None:
                break
            found.append(block)
        for block in found:
            self._take(block)
        return found

    def allocate(self, count: int) -> list[int]:
        """`count` blocks for new data: free ones first, then the least recently used idle ones."""
        if count > self.available:
            raise MemoryError("KV cache full")
        from_free = min(count, len(self.cache.free))
        blocks = self.cache.allocate(from_free)
        while len(blocks) < count:
            block, _ = self._idle.popitem(last=False)
            del self._by_key[self._key_of.pop(block)]
            blocks.append(block)
        for block in blocks:
            self._refs[block] = 1
        return blocks

    def register(self, prompt: list[int], blocks: list[int], computed: int) -> None:
        """Key the blocks of `prompt` whose positions are all computed now (`computed` prompt
        tokens are in the cache). A prefix someone else keyed first keeps that block; ours stays
        private and is freed with the sequence."""
        if not self.enabled:
            return
        full = min(computed, len(prompt)) // self.block_size
        for key, block in zip(self.keys(prompt, full), blocks, strict=False):
            if block in self._key_of or key in self._by_key:
                continue
            self._by_key[key] = block
            self._key_of[block] = key

    def release(self, blocks: list[int]) -> None:
        """A sequence is done with `blocks`: unkeyed ones go back to the free list, keyed ones to
        the idle LRU once nobody references them."""
        to_free = []
        for block in blocks:
            left = self._refs.get(block, 1) - 1
            if left > 0:
                self._refs[block] = left
                continue
            self._refs.pop(block, None)
            if block in self._key_of:
                self._idle[block] = None
            else:
                to_free.append(block)
        self.cache.release(to_free)
        blocks.clear()

    def _take(self, block: int) -> None:
        self._idle.pop(block, None)
        self._refs[block] = self._refs.get(block, 0) + 1
