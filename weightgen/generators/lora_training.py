"""What the generator training scripts need for a LoRA zoo: the adapters as canonical tokens, their
prompts, and the base they belong to.

`train/train_diffusion.py` (and the AR script) take a LoRA zoo as their `zoo`; the zoo itself says
what it is (its zoo.json has a `lora` entry), and no encoder is trained first: the `AdapterEncoder`
is fitted from the zoo's description (canonical SVD tokens need no learning).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from weightgen.encoders.adapter import AdapterEncoder
from weightgen.errors import GeneratorError
from weightgen.generators.training import ArchData, PromptTable, embed_prompts
from weightgen.tasks import get_task, task_code
from weightgen.zoo.build import LORA_ARCH
from weightgen.zoo.store import ZooStore


def is_lora_zoo(path: str | Path) -> bool:
    """Whether `path` is a LoRA zoo (read from its zoo.json; False for anything unreadable)."""
    try:
        return bool(json.loads((Path(path) / "zoo.json").read_text()).get("lora"))
    except (OSError, ValueError, AttributeError):
        return False


def load_lora_zoo(zoo: str | Path) -> tuple[AdapterEncoder, list[ArchData], PromptTable]:
    """The encoder, the non-held-out adapters as tokens (one ArchData, arch None) with one row of
    prompt ids each (every paraphrase of its task), and the embedded prompt table."""
    store = ZooStore(zoo)
    store.check_complete()
    encoder = AdapterEncoder.from_zoo(store)
    factors, records = store.load_arch(LORA_ARCH)
    if not records:
        raise GeneratorError(f"zoo {store.root} has no non-held-out adapters to train on")
    texts: dict[str, int] = {}
    rows = [[texts.setdefault(d, len(texts)) for d in get_task(r["task"]).descriptions] for r in records]
    width = max(len(r) for r in rows)
    prompts = torch.tensor([r + [-1] * (width - len(r)) for r in rows])
    codes = torch.stack([task_code(get_task(r["task"])) for r in records])
    data = ArchData(None, 0, encoder.encode(factors), prompts, records, codes)
    return encoder, [data], embed_prompts(list(texts))
