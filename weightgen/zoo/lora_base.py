"""The frozen base model that LoRA zoos adapt: a tiny `transformers` ViTForImageClassification.

Why a ViT: it is a stock `transformers` class that PEFT targets by module name (`q_proj`, `v_proj`,
`classifier`), it reads the 8x8 digits directly as 16 patches of 2x2 pixels, and at width 48 with
two layers it pretrains in seconds on 2 CPU cores (about 0.97 test accuracy on all ten digits). A
language model would need text tasks that the bundled datasets do not offer.

weightgen pretrains the base itself on the train split of all ten digits, seeded by its config, and
caches it under `$WEIGHTGEN_HOME/bases/<name>/` with `save_pretrained`. A base is identified by the
sha256 of its weights (`base_sha256`), which every LoRA zoo, adapter and generator records and
checks: an adapter is only meaningful on the exact base it was trained on. The hash covers the
tensors as loaded (names, dtypes, shapes, bytes), not the file, so a re-saved base keeps it.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError

from weightgen import atomic
from weightgen.config import BaseModelConfig, to_dict
from weightgen.errors import CheckpointError
from weightgen.home import home
from weightgen.tasks import get_task

ALL_TEN = "digits-subset-0-1-2-3-4-5-6-7-8-9"
IMAGE = (1, 8, 8)  # the digits as one-channel 8x8 images


def vit_config(cfg: BaseModelConfig):
    from transformers import ViTConfig

    return ViTConfig(image_size=IMAGE[1], patch_size=cfg.patch_size, num_channels=IMAGE[0], hidden_size=cfg.hidden_size,
                     num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                     intermediate_size=cfg.intermediate_size, num_labels=10, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)


def base_name(cfg: BaseModelConfig) -> str:
    """Cache folder name: the same config always names the same base."""
    return f"vit-digits-{zlib.crc32(json.dumps(to_dict(cfg), sort_keys=True).encode()):08x}"


def images(x: torch.Tensor) -> torch.Tensor:
    """Flat digits (..., 64) -> pixel_values (N, 1, 8, 8)."""
    return x.reshape(-1, *IMAGE)


def pretrain(cfg: BaseModelConfig):
    """A fresh ViT trained on all ten digits (train split), deterministic for a config on one machine."""
    from transformers import ViTForImageClassification

    torch.manual_seed(cfg.seed)
    model = ViTForImageClassification(vit_config(cfg))
    x, y = get_task(ALL_TEN).split("train")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for _ in range(cfg.epochs):
        for rows in torch.randperm(len(x), generator=g).split(cfg.batch_size):
            loss = F.cross_entropy(model(pixel_values=images(x[rows])).logits, y[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def state_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 of a model's weights: every tensor's name, dtype, shape and bytes, in name order, so it
    does not depend on how a file laid them out."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def base_sha256(folder: str | Path) -> str:
    """`state_sha256` of a saved base, as loaded (transformers may store other key names on disk)."""
    return state_sha256(load_base(folder).state_dict())


def ensure_base(cfg: BaseModelConfig, root: Path | None = None) -> Path:
    """The cached base for `cfg` (under `root`, default the cache folder), pretrained and saved first
    if it is not there yet. The folder appears whole or not at all (saved beside it, then renamed)."""
    folder = (root or home()) / "bases" / base_name(cfg)
    if (folder / "model.safetensors").is_file():
        return folder
    model = pretrain(cfg)
    if not (folder / "model.safetensors").is_file():  # else another process saved it meanwhile: keep that one
        with atomic.atomic_folder(folder) as tmp:
            model.save_pretrained(tmp)
            (tmp / "weightgen_base.json").write_text(json.dumps({"config": to_dict(cfg), "test_acc": accuracy(model)}))
    return folder


def load_base(folder: str | Path, sha256: str | None = None):
    """The saved base, frozen and in eval mode; with `sha256`, refuse any other base."""
    from transformers import ViTForImageClassification

    folder = Path(folder)
    if not (folder / "model.safetensors").is_file():
        raise CheckpointError(f"{folder} holds no base model (model.safetensors is missing)")
    try:
        model = ViTForImageClassification.from_pretrained(folder)
    except (OSError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"{folder} is not a readable base model ({e})") from e
    if sha256 is not None and state_sha256(model.state_dict()) != sha256:
        raise CheckpointError(f"the base model in {folder} is not the one these adapters were trained on (sha256 differs)")
    return model.requires_grad_(False).eval()


@torch.no_grad()
def accuracy(model, task_id: str = ALL_TEN, split: str = "test") -> float:
    x, y = get_task(task_id).split(split)
    return (model(pixel_values=images(x)).logits.argmax(-1) == y).float().mean().item()
