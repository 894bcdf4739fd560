"""The task loss of a LoRA generator: its predicted adapters, run on their tasks' training images.

A diffusion model trained only to denoise zoo adapters learns the zoo in weight space, and between
the zoo's tasks weight space is a poor guide: the held-out tasks' own adapters lie outside the span
of the training adapters, and averages of neighbouring tasks' adapters score far below either
(benchmarks/RESULTS.md, issue 16). Text-to-LoRA trains its hypernetwork through the downstream loss
instead. Here the denoiser's prediction of the clean sample (x0, `clean_estimate` of its output)
is decoded to factors, and the frozen base with those adapters is scored by cross-entropy on a few
training images of the example's task, all adapters of a batch in one forward pass
(`weightgen.zoo.lora_trainer.MultiLoRA`). Only seen tasks' training splits are read: the held-out
tasks stay unseen. On the validation draw, a code -> factors network trained this way reached 1.02
of trained LoRA accuracy on tasks in no zoo, against 0.75 for the same network regressed onto the
zoo's factors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from weightgen.config import LoRASpec
from weightgen.tasks import get_task
from weightgen.zoo.lora_trainer import adapter_logits, multi_lora
from weightgen.zoo.trainer import pooled_train_data


class AdapterTaskLoss(nn.Module):
    """Cross-entropy of adapters of a frozen base on `images` training images each of their tasks."""

    def __init__(self, base: nn.Module, lora: dict, task_ids: list[str], images: int = 32):
        """`lora`: the zoo's LoRA description (rank, alpha, target_modules), as encoders keep it."""
        super().__init__()
        self.ids = list(dict.fromkeys(task_ids))
        self.images = images
        x, y, offset, sizes = pooled_train_data([get_task(t) for t in self.ids])
        self.register_buffer("x", x, persistent=False)
        self.register_buffer("y", y, persistent=False)
        self.register_buffer("offset", offset, persistent=False)
        self.register_buffer("sizes", sizes, persistent=False)
        spec = LoRASpec(rank=int(lora["rank"]), alpha=float(lora["alpha"]), target_modules=tuple(lora["target_modules"]))
        self.model = multi_lora(base, spec)

    def forward(self, factors: dict[str, torch.Tensor], task_ids: list[str], g: torch.Generator) -> torch.Tensor:
        """Mean cross-entropy over the adapters (K, ...) of their tasks' images (drawn on the host from `g`)."""
        which = torch.tensor([self.ids.index(t) for t in task_ids])
        pick = (torch.rand(len(which), self.images, generator=g) * self.sizes.cpu()[which, None]).long()
        rows = (pick + self.offset.cpu()[which, None]).to(self.x.device)
        logits = adapter_logits(self.model, factors, self.x[rows])
        return F.cross_entropy(logits.flatten(0, 1).float(), self.y[rows].flatten())
