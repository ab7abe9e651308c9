"""A loaded generation model: weights on the device, its tokenizer, its chat template."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.inference.gguf_file import load_gguf
from services.inference.gpt2 import GPT2Model
from services.inference.hf import load_hf_dir
from services.inference.llama import LlamaModel
from services.inference.tokenizer import ChatTemplate, bpe_from_gguf, template_from_jinja
from services.inference.xp import Backend


@dataclass
class Generator:
    name: str
    model: LlamaModel
    tokenizer: Any
    template: ChatTemplate
    stop_ids: set[int]

    def prompt_ids(self, prompt: str, messages: list[tuple[str, str]]) -> list[int]:
        """A chat prompt: `messages`, or `prompt` as one user message (the defaults are chat models)."""
        turns = messages or [("user", prompt)]
        return self.tokenizer.encode(self.template.render(turns), add_special_tokens=False).ids


def load_generator(backend: Backend, path: Path, name: str = "") -> Generator:
    """A llama-family or GPT-2 model from a .gguf file or a Hugging Face directory."""
    if path.is_dir():
        return _load_hf_dir(backend, path, name)
    if path.suffix != ".gguf":
        raise ValueError(f"{path}: generation models load from a .gguf file or a Hugging Face directory")
    family, config, weights, meta = load_gguf(path)
    tokens = meta["tokenizer.ggml.tokens"]
    tokenizer = bpe_from_gguf(
        tokens,
        meta.get("tokenizer.ggml.merges") or [],
        meta["tokenizer.ggml.token_type"],
        digits_split=meta.get("tokenizer.ggml.pre") in ("smollm", None),
    )
    template = template_from_jinja(meta.get("tokenizer.chat_template") or "") or ChatTemplate()
    stop_ids = (
        {int(meta["tokenizer.ggml.eos_token_id"])}
        if meta.get("tokenizer.ggml.eos_token_id") is not None
        else set()
    )
    if "<|im_end|>" in tokens:
        stop_ids.add(tokens.index("<|im_end|>"))
    if "<|endoftext|>" in tokens:
        stop_ids.add(tokens.index("<|endoftext|>"))
    model = (GPT2Model if family == "gpt2" else LlamaModel)(backend, config, weights)
    return Generator(name or path.stem, model, tokenizer, template, stop_ids)


def _load_hf_dir(backend: Backend, path: Path, name: str) -> Generator:
    from tokenizers import Tokenizer  # noqa: PLC0415

    family, config, weights, meta = load_hf_dir(path)
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    template = template_from_jinja(meta["chat_template"]) or ChatTemplate()
    stop_ids = set(meta["eos_token_id"])
    for token in ("<|im_end|>", "<|endoftext|>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            stop_ids.add(token_id)
    model = (GPT2Model if family == "gpt2" else LlamaModel)(backend, config, weights)
    return Generator(name or path.name, model, tokenizer, template, stop_ids)
