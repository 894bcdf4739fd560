"""The mean network of a task, predicted from the task's structure (`weightgen.tasks.task_code`).

A zoo's per-task mean is nearly linear in the task code (benchmarks/RESULTS.md: a ridge map alone
reaches ~0.97 accuracy on held-out tasks), and a generator trained from scratch on a CPU budget does
not learn that map through attention. So the generators get it in closed form and model what the
mean leaves, the spread between seeds:

- `fit_ridge`: a ridge regression from codes to vectors (latents or flat weights);
- `fit_offsets`: each seen task's own offset from it, as a shrunk random effect (the best linear
  unbiased predictor of a one-way mixed model): a task with many consistent models keeps nearly its
  own mean; an unseen task gets no offset, i.e. the ridge mean alone;
- `TaskMean`: both, per arch, as saved buffers of the model that uses them (the VQ tokenizer,
  `weightgen.encoders.vqvae`; the diffusion denoiser, `weightgen.generators.dit`).
"""

from __future__ import annotations

import torch
from torch import nn


def fit_ridge(x: torch.Tensor, codes: torch.Tensor, ridge: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (N, D) on codes (N, C) -> (x mean (D,), code mean (C,), weight (C, D)), all float64:
    x is predicted as x_mean + (code - code_mean) @ weight."""
    c = codes.double() - codes.double().mean(0)
    z = x.double() - x.double().mean(0)
    weight = torch.linalg.solve(c.T @ c + ridge * torch.eye(c.shape[1], dtype=c.dtype), c.T @ z)
    return x.double().mean(0), codes.double().mean(0), weight


def fit_offsets(resid: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Residuals (N, D) of the ridge mean and their codes (N, C) -> (the distinct codes (K, C), each
    one's offset (K, D)): the task's mean residual shrunk by n tau^2 / (n tau^2 + sigma^2), where
    sigma^2 is the spread between seeds of one task and tau^2 the spread of the task means beyond
    what sigma^2 explains."""
    n, d = resid.shape
    resid = resid.double()
    tasks, inverse = torch.unique(codes, dim=0, return_inverse=True)
    count = torch.bincount(inverse, minlength=len(tasks)).double()
    task_mean = torch.zeros(len(tasks), d, dtype=resid.dtype).index_add_(0, inverse, resid) / count[:, None]
    within = (resid - task_mean[inverse]).pow(2).sum() / max(n - len(tasks), 1) / d  # sigma^2
    between = task_mean.pow(2).mean() - (within / count).mean()  # tau^2
    keep = (count * between / (count * between + within)).clamp(0, 1) if between > 0 else torch.zeros_like(count)
    return tasks, keep[:, None] * task_mean


class TaskMean(nn.Module):
    """Per-arch conditional mean of D-dim vectors (arch a uses the first dims[a]): ridge map plus
    seen-task offsets. Buffers only (fitted in closed form, saved with the owning model); rows of
    `seen_codes` past an arch's task count are NaN, which never matches a code. `max_seen_tasks=0`
    keeps the ridge map alone."""

    def __init__(self, n_archs: int, code_dim: int, dim: int, max_seen_tasks: int):
        super().__init__()
        self.register_buffer("x_mean", torch.zeros(n_archs, dim))
        self.register_buffer("code_mean", torch.zeros(n_archs, code_dim))
        self.register_buffer("weight", torch.zeros(n_archs, code_dim, dim))
        self.register_buffer("seen_codes", torch.full((n_archs, max_seen_tasks, code_dim), float("nan")))
        self.register_buffer("seen_offset", torch.zeros(n_archs, max_seen_tasks, dim))

    @torch.no_grad()
    def fit(self, arch_index: int, x: torch.Tensor, codes: torch.Tensor, ridge: float = 1.0) -> None:
        """Fit one arch from its training vectors x (N, D') and their task codes (N, C)."""
        d = x.shape[1]
        if d > self.x_mean.shape[1]:
            raise ValueError(f"vectors of {d} values, but the task mean was built for at most {self.x_mean.shape[1]}")
        x_mean, code_mean, weight = fit_ridge(x, codes, ridge)
        for buf in (self.x_mean, self.code_mean, self.weight, self.seen_offset):
            buf[arch_index].zero_()
        self.x_mean[arch_index, :d], self.code_mean[arch_index] = x_mean.to(self.x_mean), code_mean.to(self.code_mean)
        self.weight[arch_index, :, :d] = weight.to(self.weight)
        self.seen_codes[arch_index] = float("nan")
        if self.seen_codes.shape[1] == 0:
            return
        tasks, offset = fit_offsets(x - self(arch_index, codes, d), codes)
        if len(tasks) > self.seen_codes.shape[1]:
            raise ValueError(f"{len(tasks)} seen tasks but the task mean was built for at most {self.seen_codes.shape[1]}")
        self.seen_codes[arch_index, : len(tasks)] = tasks.to(self.seen_codes)
        self.seen_offset[arch_index, : len(tasks), :d] = offset.to(self.seen_offset)

    def forward(self, arch_index: int, codes: torch.Tensor | None, d: int) -> torch.Tensor:
        """The mean for task codes (B, C) -> (B, d); None (no known task) -> the arch's mean (1, d)."""
        mean = self.x_mean[arch_index, :d][None]
        if codes is None:
            return mean
        codes = codes.to(mean)
        shift = (codes - self.code_mean[arch_index]) @ self.weight[arch_index, :, :d]
        match = (codes[:, None] == self.seen_codes[arch_index][None]).all(-1)  # (B, tasks)
        return mean + shift + match.to(mean) @ self.seen_offset[arch_index, :, :d]
