"""A task-code hypernetwork for LoRA: the learned, deterministic reference for generated adapters.

Text-to-LoRA's idea reduced to its core: an MLP from a task's code (`weightgen.tasks.task_code`,
the shift levels) to one adapter's factors, trained only through the task loss (each predicted
adapter's cross-entropy on the frozen base, on training images of the zoo's seen tasks). It starts
at the mean seen adapter. It gives one adapter per task, with no spread, and learns nothing of how
the zoo's adapters are distributed, so it is the regression a generator trained through the same
loss must be compared with: if it matches the generator, the generator's diffusion is not what
makes its adapters work. On session 8's validation draw a scratch version reached 1.01 / 0.87-0.94
(mean / min) of trained LoRA accuracy on tasks in no zoo (benchmarks/RESULTS.md, issue 16).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch import nn

from weightgen.generators.task_loss import AdapterTaskLoss
from weightgen.tasks import TASK_CODE_DIM, TaskSpec, get_task, task_code


class LoRAHypernet(nn.Module):
    """Task codes (K, TASK_CODE_DIM) -> adapter factors {name: (K, *shape)}."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], mean: torch.Tensor, hidden: int = 256):
        """`shapes`: one adapter's factor shapes, in order; `mean` (P,): the flat starting adapter."""
        super().__init__()
        self.shapes = dict(shapes)
        sizes = [int(torch.Size(s).numel()) for s in self.shapes.values()]
        if sum(sizes) != mean.numel():
            raise ValueError(f"mean has {mean.numel()} numbers, the factor shapes {sum(sizes)}")
        self.sizes = sizes
        self.net = nn.Sequential(nn.Linear(TASK_CODE_DIM, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, mean.numel()))
        with torch.no_grad():  # start at the mean adapter; the task loss moves each task away from it
            self.net[-1].weight.zero_()
            self.net[-1].bias.copy_(mean)

    def forward(self, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = self.net(codes)
        parts = flat.split(self.sizes, dim=1)
        return {n: p.reshape(len(codes), *s) for (n, s), p in zip(self.shapes.items(), parts)}

    @torch.no_grad()
    def adapters(self, tasks: list[TaskSpec]) -> dict[str, torch.Tensor]:
        device = self.net[0].weight.device
        return self(torch.stack([task_code(t) for t in tasks]).to(device))


def train_hypernet(base: nn.Module, lora: dict, factors: dict[str, torch.Tensor], task_ids: list[str],
                   steps: int = 2000, tasks_per_step: int = 16, examples: int = 64, lr: float = 1e-3,
                   hidden: int = 256, seed: int = 0,
                   on_step: Callable[[int, int], None] | None = None) -> LoRAHypernet:
    """A hypernetwork trained on the training splits of `task_ids` (the zoo's seen tasks) through
    the task loss. `lora`: the zoo's LoRA description (rank, alpha, target_modules); `factors`: the
    seen adapters (M, ...), whose mean is the start. Runs on the base's device."""
    if steps < 1 or tasks_per_step < 1 or not task_ids:
        raise ValueError("a hypernetwork needs steps >= 1, tasks_per_step >= 1 and at least one seen task")
    device = next(base.parameters()).device
    shapes = {n: tuple(f.shape[1:]) for n, f in factors.items()}
    mean = torch.cat([f.float().mean(0).flatten() for f in factors.values()])
    torch.manual_seed(seed)  # the MLP's init
    net = LoRAHypernet(shapes, mean, hidden).to(device)
    loss_fn = AdapterTaskLoss(base, lora, task_ids, examples).to(device)
    codes = torch.stack([task_code(get_task(t)) for t in loss_fn.ids]).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=min(100, steps // 10), num_training_steps=steps)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        which = torch.randint(len(loss_fn.ids), (tasks_per_step,), generator=g)
        loss = loss_fn(net(codes[which.to(device)]), [loss_fn.ids[i] for i in which.tolist()], g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step + 1, steps)
    return net.eval()
