"""The task loss of a generator: its predicted networks or adapters, run on their tasks' training data.

A diffusion model trained only to denoise zoo members learns the zoo in weight space, and between
the zoo's tasks weight space is a poor guide. On the LoRA zoo, the held-out tasks' own adapters lie
outside the span of the training adapters, and averages of neighbouring tasks' adapters score far
below either (benchmarks/RESULTS.md, issue 16). Text-to-LoRA trains its hypernetwork through the
downstream loss instead. Here the denoiser's prediction of the clean sample (x0, `clean_estimate`
of its output) is decoded to weights, and those are scored by the task's own loss (cross-entropy
for classification) on a few training examples of each row's task; all rows of a batch run in one
batched forward pass. Only the training splits of the zoo's seen tasks are read, so held-out tasks
stay unseen. On the LoRA validation draw, a code -> factors network trained this way reached 1.02
of trained LoRA accuracy on tasks in no zoo, against 0.75 for the same network regressed onto the
zoo's factors.

- `AdapterTaskLoss`: LoRA factors of a frozen base (`weightgen.zoo.lora_trainer.MultiLoRA`).
- `NetworkTaskLoss`: flat weights of one MLP arch (`ArchSpec.forward_batched`, the zoo trainer's loss).

Keep v-prediction. With x0-prediction (`prediction_type: sample`) the task loss reaches the output
at full strength at every noise level, and on the LoRA validation draw the denoiser stopped reading
its input: one adapter per prompt, every sample of a task the same (they agreed on every test
image), which the novelty probe still counts as new. Weighting the loss by each row's noise share
kept the collapse and lost the accuracy. Under v-prediction the loss reaches x0 through sigma_t, so
it shapes the noisy end and leaves the low-noise steps to the denoising loss; samples there
disagree with each other as much as the zoo's own adapters of a task do (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from weightgen.config import LoRASpec
from weightgen.errors import ConfigError
from weightgen.specs import ArchSpec
from weightgen.tasks import get_task
from weightgen.zoo.lora_trainer import adapter_logits, multi_lora
from weightgen.zoo.trainer import batch_loss, pooled_train_data


class TaskExamples(nn.Module):
    """The training splits of a set of tasks, pooled once; `draw` picks examples per row's task."""

    def __init__(self, task_ids: list[str], examples: int = 32):
        super().__init__()
        self.ids = list(dict.fromkeys(task_ids))
        self.examples = examples
        tasks = [get_task(t) for t in self.ids]
        self.loss_kind = tasks[0].loss
        if any(t.loss != self.loss_kind for t in tasks):
            raise ValueError("a task loss needs tasks of one kind of loss")
        x, y, offset, sizes = pooled_train_data(tasks)
        self.register_buffer("x", x, persistent=False)
        self.register_buffer("y", y, persistent=False)
        self.offset, self.sizes = offset, sizes  # on the host: the draw happens there

    def draw(self, task_ids: list[str], g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (K, examples, in), y (K, examples, ...)): random training examples of each row's task;
        a task id the loss was not built with raises ValueError."""
        which = torch.tensor([self.ids.index(t) for t in task_ids])
        pick = (torch.rand(len(which), self.examples, generator=g) * self.sizes[which, None]).long()
        rows = (pick + self.offset[which, None]).to(self.x.device)
        return self.x[rows], self.y[rows]


class AdapterTaskLoss(TaskExamples):
    """Cross-entropy (K,) of LoRA adapters (K, ...) of a frozen base, each on its task's examples."""

    def __init__(self, base: nn.Module, lora: dict, task_ids: list[str], examples: int = 32):
        """`lora`: the zoo's LoRA description (rank, alpha, target_modules), as the encoders keep it."""
        super().__init__(task_ids, examples)
        spec = LoRASpec(rank=int(lora["rank"]), alpha=float(lora["alpha"]), target_modules=tuple(lora["target_modules"]))
        self.model = multi_lora(base, spec)

    def forward(self, factors: dict[str, torch.Tensor], task_ids: list[str], g: torch.Generator) -> torch.Tensor:
        x, y = self.draw(task_ids, g)
        logits = adapter_logits(self.model, factors, x)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").view(len(y), -1).mean(1)


class NetworkTaskLoss(TaskExamples):
    """Loss (K,) of K networks of one arch, given as flat weights (K, P), each on its task's examples."""

    def forward(self, arch: ArchSpec, flat: torch.Tensor, task_ids: list[str], g: torch.Generator) -> torch.Tensor:
        x, y = self.draw(task_ids, g)
        return batch_loss(arch, arch.layout().unflatten(flat), x, y, self.loss_kind)


def check_task_loss(cfg) -> None:
    """One sentence for a training config's bad `task_loss` or `task_examples`."""
    if not cfg.task_loss >= 0 or cfg.task_examples < 1:
        raise ConfigError(f"task_loss must be >= 0 and task_examples >= 1, got {cfg.task_loss} and {cfg.task_examples}")
