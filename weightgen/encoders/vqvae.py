"""WeightVQVAE: weight tokens -> discrete ids -> weight tokens.

Each normalised token (width floats) is encoded by a small MLP conditioned on its metadata
embedding into a latent of `latent_dim` values, quantised by grouped residual finite scalar
quantisation (Mentzer et al., "Finite Scalar Quantization", 2023; `vector-quantize-pytorch`'s
GroupedResidualFSQ), and decoded by a second MLP conditioned on the same embedding. FSQ has no
codebook to collapse and needs no commitment loss. The latent is split into `groups` groups of
len(levels) dims (so latent_dim = groups * len(levels): no hidden projection squeezes it), and each
group is quantised in `num_quantizers` residual stages. A token becomes groups * num_quantizers ids,
each one of prod(levels) codes, so

    bits per token = groups * num_quantizers * log2(prod(levels))
    compression    = 32 * width / bits per token

The defaults give 8 ids of 256 codes (64 bits) for 16 floats (512 bits): compression 8, and a
small vocabulary for the autoregressive generator that models the id sequences.

With `task_code_dim > 0` the tokenizer codes each network's residual around its task's mean
(`weightgen.space.task_mean.TaskMean`: a ridge map from the task code plus seen-task offsets, fitted
in closed form on the flat weights before training), so `encode` and `decode` take the task codes.
The ids then carry the spread between seeds, not which task the network solves: an autoregressive
generator that learns little more than which ids are common at each position still decodes to
networks of the prompt's task (benchmarks/RESULTS.md), where ids of whole networks left it at chance.
"""

from __future__ import annotations

import math

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from einops import rearrange
from vector_quantize_pytorch import GroupedResidualFSQ

from weightgen.encoders.base import TokenCodecMixin, token_mlp
from weightgen.errors import ArchError
from weightgen.space.task_mean import TaskMean
from weightgen.specs import ArchSpec


class WeightVQVAE(ModelMixin, ConfigMixin, TokenCodecMixin):
    @register_to_config
    def __init__(
        self,
        archs: list[dict],
        width: int = 16,
        hidden: int = 256,
        levels: tuple[int, ...] = (4, 4, 4, 4),
        groups: int = 4,
        num_quantizers: int = 2,
        embed_dim: int = 64,
        task_code_dim: int = 0,  # > 0: code residuals around a task-conditioned mean (module docstring)
        max_seen_tasks: int = 0,  # seen tasks per arch that keep their own offset of that mean
    ):
        super().__init__()
        self._setup(archs, width, embed_dim)
        latent = groups * len(levels)
        self.encoder = token_mlp(width + embed_dim, hidden, latent)
        self.quantizer = GroupedResidualFSQ(dim=latent, groups=groups, levels=list(levels), num_quantizers=num_quantizers)
        self.decoder = token_mlp(latent + embed_dim, hidden, width)
        self.task_mean = None
        if task_code_dim:
            size = max(a.layout().numel for a in self.arch_specs)
            self.task_mean = TaskMean(len(self.arch_specs), task_code_dim, size, max_seen_tasks)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.config.levels)

    @property
    def ids_per_token(self) -> int:
        return self.config.groups * self.config.num_quantizers

    @property
    def bits_per_token(self) -> float:
        return self.ids_per_token * math.log2(self.codebook_size)

    @property
    def compression(self) -> float:
        return 32 * self.config.width / self.bits_per_token

    def forward(self, tokens: torch.Tensor, arch: torch.Tensor, meta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised tokens (M, width), arch index (M,), meta (M, 3) -> (reconstruction, ids (M, I))."""
        emb = self.meta_embed(arch, meta)
        z = self.encoder(torch.cat([tokens, emb], -1))[None]  # (1, M, latent): FSQ wants (B, N, D)
        zq, ids = self.quantizer(z)  # ids (groups, 1, M, Q)
        recon = self.decoder(torch.cat([zq[0], emb], -1))
        return recon, rearrange(ids, "g 1 m q -> m (g q)")

    def _ids_to_latent(self, ids: torch.Tensor) -> torch.Tensor:
        grouped = rearrange(ids, "n t (g q) -> g n t q", g=self.config.groups)
        return self.quantizer.get_output_from_indices(grouped)

    def fit_task_mean(self, arch: ArchSpec, flat: torch.Tensor, codes: torch.Tensor) -> None:
        """Fit the task mean of one arch from its training models (N, P) and task codes (N, C)."""
        if self.task_mean is None:
            raise ValueError("this tokenizer was built without a task mean (task_code_dim=0)")
        self.task_mean.fit(self.stats.index[arch.slug], flat, codes)

    def residual(self, arch: ArchSpec, flat: torch.Tensor, codes: torch.Tensor | None) -> torch.Tensor:
        """What the ids code: the weights (N, P) minus their task's mean (codes (N, C) or (1, C); None
        = no known task: the arch's mean), or the weights themselves without a task mean."""
        if self.task_mean is None:
            return flat
        if flat.shape[-1] != arch.layout().numel:
            raise ArchError(f"{arch.describe()} has {arch.layout().numel} weights, got vectors of {flat.shape[-1]}")
        return flat - self.task_mean(self.stats.index[arch.slug], codes, flat.shape[1]).to(flat)

    @torch.no_grad()
    def encode(self, flat: torch.Tensor, arch: ArchSpec, codes: torch.Tensor | None = None) -> torch.Tensor:
        """Flat weights (N, P) -> ids (N, T, ids_per_token); codes: their task codes (see `residual`)."""
        self.stats.layout(arch)  # a clear error for an unknown arch before anything else
        tokens = self.tokens(arch, self.residual(arch, flat.float(), codes))
        n, t, _ = tokens.shape
        if n == 0:
            return torch.zeros(0, t, self.ids_per_token, dtype=torch.long, device=tokens.device)
        index, meta = self._index_meta(arch, n)
        _, ids = self(tokens.reshape(n * t, -1), index, meta)
        return ids.reshape(n, t, -1).long()

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, arch: ArchSpec, codes: torch.Tensor | None = None) -> torch.Tensor:
        """ids (N, T, ids_per_token) -> flat weights (N, P); codes: their task codes (see `residual`)."""
        layout, emb = self._meta(arch)
        if ids.shape[0] == 0:
            return torch.zeros(0, arch.layout().numel, device=ids.device)
        zq = self._ids_to_latent(ids)  # (N, T, latent)
        recon = self.decoder(torch.cat([zq, emb.expand(*zq.shape[:-1], -1)], -1))
        flat = self.untokens(arch, recon * layout.mask.to(recon.device, recon.dtype))
        if self.task_mean is None:
            return flat
        return flat + self.task_mean(self.stats.index[arch.slug], codes, flat.shape[1]).to(flat)
