"""Tokenizers: byte-level BPE rebuilt from GGUF metadata, and chat templates.

GGUF stores a GPT-2 style vocabulary (tokens in the byte-to-unicode alphabet, merges as
"a b" strings, token types where 3 marks control tokens such as `<|im_start|>`). We rebuild the same
tokenizer with the `tokenizers` library rather than hand-writing BPE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

CONTROL = 3


def bpe_from_gguf(
    tokens: Sequence[str], merges: Sequence[str], token_types: Sequence[int], digits_split: bool = True
) -> Tokenizer:
    vocab = {token: index for index, token in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    # SmolLM-style vocabularies keep every digit a token of its own.
    tokenizer.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if digits_split
        else byte_level
    )
    tokenizer.decoder = decoders.ByteLevel()
    specials = [tokens[i] for i, kind in enumerate(token_types) if kind == CONTROL]
    tokenizer.add_special_tokens(specials)
    return tokenizer


@dataclass(frozen=True)
class ChatTemplate:
    """ChatML, the format of SmolLM2 and many others; what its GGUF template renders to."""

    default_system: str = ""

    def render(self, messages: Sequence[tuple[str, str]], add_generation_prompt: bool = True) -> str:
        parts = []
        if self.default_system and (not messages or messages[0][0] != "system"):
            parts.append(f"<|im_start|>system\n{self.default_system}<|im_end|>\n")
        for role, content in messages:
            parts.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)


def template_from_jinja(source: str) -> ChatTemplate | None:
    """Recognise the chat templates we render natively; None for ones we do not know."""
    if "<|im_start|>" not in source:
        return None
    marker = "<|im_start|>system\n"
    system = ""
    if marker in source:
        start = source.index(marker) + len(marker)
        end = source.find("<|im_end|>", start)
        if end > start and "{{" not in source[start:end]:
            system = source[start:end]
    return ChatTemplate(default_system=system)
