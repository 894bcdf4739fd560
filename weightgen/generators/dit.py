"""WeightDiT: a transformer denoiser over per-token encoder latents, built from diffusers blocks.

One sequence = one network: its T tokens' latents (from WeightAutoencoder, or LoRA factors), each
with a learned embedding of its (arch, layer, role, position) metadata added, so one model serves
many archs. Every block is diffusers' `BasicTransformerBlock` with `norm_type="ada_norm_single"`:
self-attention over the network's tokens, cross-attention to the prompt's MiniLM token embeddings,
and the timestep entering through adaptive layer norm (shift / scale / gate from one shared
`AdaLayerNormSingle` embedding, as in DiT (Peebles & Xie, 2023) and PixArt-α). The output head is
modulated the same way. Classifier-free guidance uses a learned null prompt (`null_text`).

Conditional mean (`task_code_dim > 0`): the prompt's task structure (`weightgen.tasks.task_code`:
which digit each output is, the shift, the dataset) predicts the latents' mean through a ridge
regression fitted in closed form per arch before training (`set_latent_stats`), and the model
diffuses the standardised residual around it. The conditional mean of a zoo is nearly linear in that
code (benchmarks/RESULTS.md: ridge alone reaches ~0.97 accuracy on held-out tasks), and a denoiser
trained from scratch on a CPU budget did not learn the prompt -> weights map through attention, so
the part that is linear is given to it exactly and the network learns what remains: the spread
between seeds and the non-linear part. The code also enters the adaptive norms (`code_proj`: one
linear map, or with `code_hidden` an MLP, as the LoRA generators use it: beside min-SNR weights it
raised tasks in no zoo from 0.95 / 0.64 to 0.96 / 0.78 of trained on the validation draw; RESULTS.md,
issue 16, session 8), and is zeroed with the prompt for classifier-free guidance; a prompt that
names no known task uses the arch's average code, i.e. the zoo's mean. With `max_seen_tasks > 0`
each task seen in training also keeps its own offset from that linear mean (a shrunk random
effect): the linear map alone lost ~1 accuracy point on seen tasks against the average of their own
zoo models, and an unseen task, having no offset, gets the linear mean as before. Both live in a
`weightgen.space.task_mean.TaskMean` (`self.task_mean`), the same one the VQ tokenizer uses. With
`conditional_mean=False` (the LoRA generators' setting) the code only joins the adaptive norms and
the network carries the whole map: the closed-form mean is then a baseline, not a component.
Generators saved before that kept its buffers at the top level (`code_mean`, `mean_weight`,
`seen_codes`, `seen_offset`); `_move_legacy_task_mean` moves them into it, so they still load.

This file holds only the denoiser; the noise process is a diffusers scheduler, owned by the
pipeline that will use this model.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.normalization import AdaLayerNormSingle
from torch import nn

from weightgen.encoders.base import MetaEmbedding
from weightgen.generators.common import TextStatsMixin
from weightgen.space.task_mean import TaskMean


def _mask_bias(mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, L) bool keep-mask -> (B, 1, L) additive attention bias, as diffusers' blocks expect."""
    if mask is None:
        return None
    return (1.0 - mask.float()).mul(-10000.0).unsqueeze(1)


def dit_blocks(dim: int, heads: int, head_dim: int, n: int) -> nn.ModuleList:
    """n diffusers transformer blocks with adaptive-norm (DiT / PixArt-alpha) timestep conditioning and
    cross-attention to the prompt: what both weight denoisers stack."""
    return nn.ModuleList(
        BasicTransformerBlock(dim, heads, head_dim, cross_attention_dim=dim, activation_fn="gelu-approximate",
                              norm_type="ada_norm_single", norm_elementwise_affine=False)
        for _ in range(n)
    )


def _legacy_task_mean_hook(module: WeightDiT, state_dict, prefix: str, *_) -> None:
    module._move_legacy_task_mean(state_dict, prefix)


class WeightDiT(ModelMixin, ConfigMixin, TextStatsMixin):
    @register_to_config
    def __init__(
        self,
        latent_dim: int = 16,
        n_archs: int = 1,
        n_layers: int = 8,
        n_positions: int = 512,
        num_layers: int = 4,
        num_attention_heads: int = 4,
        attention_head_dim: int = 32,
        text_dim: int = 384,
        max_tokens: int = 1,
        task_kinds: list[str] | None = None,  # kinds trained on (others are refused); None = any
        pooled_conditioning: bool = True,
        task_code_dim: int = 0,  # > 0: conditional mean + code in the adaptive norms (see above)
        max_seen_tasks: int = 0,  # > 0: a per-task offset of the mean for up to this many seen tasks per arch
        conditional_mean: bool = True,  # False: the task code only joins the adaptive norms, no closed-form mean
        code_hidden: int = 0,  # > 0: the code enters through an MLP with this hidden width, not one linear map
    ):
        super().__init__()
        dim = num_attention_heads * attention_head_dim
        self.proj_in = nn.Linear(latent_dim, dim)
        self.meta_embed = MetaEmbedding(n_archs, n_layers, n_positions, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.null_text = nn.Parameter(torch.zeros(1, 1, text_dim))  # the "no prompt" of guidance
        self.adaln_single = AdaLayerNormSingle(dim)
        # the prompt's mean token state joins the timestep in the adaptive norms: a global signal
        # every block sees from the first step, beside the slower-to-learn cross-attention
        self.pooled_proj = nn.Linear(text_dim, dim) if pooled_conditioning else None
        self.blocks = dit_blocks(dim, num_attention_heads, attention_head_dim, num_layers)
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, latent_dim)
        # per-arch, per-slot latent statistics: the model denoises standardised latents, so the
        # noise has the same meaning in every slot (saved with the weights; set once before training)
        self.register_buffer("latent_mean", torch.zeros(n_archs, max_tokens, latent_dim))
        self.register_buffer("latent_std", torch.ones(n_archs, max_tokens, latent_dim))
        self._register_text_stats(text_dim)
        self.code_proj = self.task_mean = None
        if task_code_dim and code_hidden:
            self.code_proj = nn.Sequential(nn.Linear(task_code_dim, code_hidden), nn.SiLU(),
                                           nn.Linear(code_hidden, code_hidden), nn.SiLU(), nn.Linear(code_hidden, dim))
        elif task_code_dim:
            self.code_proj = nn.Linear(task_code_dim, dim)
        if task_code_dim and conditional_mean:
            self.task_mean = TaskMean(n_archs, task_code_dim, max_tokens * latent_dim, max_seen_tasks)
            self.register_load_state_dict_pre_hook(_legacy_task_mean_hook)

    @torch.no_grad()
    def set_latent_stats(self, arch_index: int, latents: torch.Tensor, codes: torch.Tensor | None = None,
                         ridge: float = 1.0, floor: float = 0.1) -> None:
        """Fit one arch's slot statistics from its training latents (N, T, d): the mean (with task
        codes (N, task_code_dim) and a code-conditioned denoiser: a ridge regression on the codes)
        and the std of what the mean leaves. Stds are floored at `floor` x the arch's median std, so
        near-constant slots do not turn noise into large errors."""
        n, t, d = latents.shape
        if t > self.config.max_tokens:
            raise ValueError(f"{t} tokens but the denoiser was built for at most {self.config.max_tokens}")
        self.latent_mean[arch_index, :t] = latents.mean(0)
        if self.task_mean is not None:
            if codes is None or codes.shape != (n, self.config.task_code_dim):
                raise ValueError(f"a code-conditioned denoiser needs task codes of shape ({n}, "
                                 f"{self.config.task_code_dim})")
            self.task_mean.fit(arch_index, latents.flatten(1), codes, ridge)
        resid = latents - self.conditional_mean(arch_index, codes, t)
        std = resid.std(0) if n > 1 else torch.ones_like(latents[0])
        self.latent_std[arch_index, :t] = std.clamp_min(floor * std.median().clamp_min(1e-8))

    def conditional_mean(self, arch_index: int, codes: torch.Tensor | None, t: int) -> torch.Tensor:
        """The latents' mean for task codes (B, task_code_dim) -> (B, t, d); None (or a denoiser
        without codes) -> the arch's mean (1, t, d)."""
        if self.task_mean is None or codes is None:
            return self.latent_mean[arch_index, :t][None]
        d = self.config.latent_dim
        return self.task_mean(arch_index, codes, t * d).view(len(codes), t, d)

    def _fix_state_dict_keys_on_load(self, state_dict) -> None:
        """diffusers calls this in `from_pretrained` before matching keys (its loader bypasses
        `load_state_dict`, hence the same fix in both places)."""
        super()._fix_state_dict_keys_on_load(state_dict)
        self._move_legacy_task_mean(state_dict)

    def _move_legacy_task_mean(self, state_dict, prefix: str = "") -> None:
        """Move a pre-`TaskMean` generator's buffers into `task_mean`; its x mean was `latent_mean`
        then. Also a `load_state_dict` pre-hook, for training states saved by `accelerate`."""
        if self.task_mean is None or f"{prefix}mean_weight" not in state_dict:
            return
        state_dict[f"{prefix}task_mean.weight"] = state_dict.pop(f"{prefix}mean_weight")
        state_dict[f"{prefix}task_mean.code_mean"] = state_dict.pop(f"{prefix}code_mean")
        latent_mean = state_dict[f"{prefix}latent_mean"]
        state_dict[f"{prefix}task_mean.x_mean"] = latent_mean.flatten(1).clone()
        for name in ("seen_codes", "seen_offset"):  # absent when built with max_seen_tasks = 0: empty
            empty = torch.empty(getattr(self.task_mean, name).shape, dtype=latent_mean.dtype)
            state_dict[f"{prefix}task_mean.{name}"] = state_dict.pop(f"{prefix}{name}", empty)

    def standardize(self, latents: torch.Tensor, arch_index: int, codes: torch.Tensor | None = None) -> torch.Tensor:
        t = latents.shape[-2]
        return (latents - self.conditional_mean(arch_index, codes, t)) / self.latent_std[arch_index, :t]

    def destandardize(self, x: torch.Tensor, arch_index: int, codes: torch.Tensor | None = None) -> torch.Tensor:
        t = x.shape[-2]
        return x * self.latent_std[arch_index, :t] + self.conditional_mean(arch_index, codes, t)

    def null_prompt(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Text tokens (B, 1, text_dim) and mask (B, 1) of the unconditional prompt."""
        return self.null_text.expand(batch, 1, -1), torch.ones(batch, 1, dtype=torch.bool, device=self.null_text.device)

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        arch_index: torch.Tensor,
        meta: torch.Tensor,
        token_mask: torch.Tensor | None = None,
        task_code: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """latents (B, T, d), timestep (B,), text (B, L, text_dim) + mask (B, L), arch_index (B,),
        meta (B, T, 3), token_mask (B, T) (False on padding when archs of different T share a
        batch), task_code (B, task_code_dim) (zeros = none) -> the model output (B, T, d) (noise,
        sample or v, as the scheduler is configured)."""
        b, t, _ = latents.shape
        h = self.proj_in(latents)  # (B, T, dim)
        h = h + self.meta_embed(arch_index.repeat_interleave(t), meta.reshape(b * t, 3)).view(b, t, -1)
        text_tokens = self.standardize_text(text_tokens)
        text = self.text_proj(text_tokens)  # (B, L, dim)
        embedded_t = self.adaln_single.emb(timestep, resolution=None, aspect_ratio=None, batch_size=b,
                                           hidden_dtype=h.dtype)
        if self.pooled_proj is not None:
            weights = text_mask.to(text_tokens.dtype)[..., None]
            pooled = (text_tokens * weights).sum(1) / weights.sum(1).clamp_min(1)
            embedded_t = embedded_t + self.pooled_proj(pooled)
        if self.code_proj is not None and task_code is not None:
            embedded_t = embedded_t + self.code_proj(task_code.to(embedded_t.dtype))
        t_emb = self.adaln_single.linear(self.adaln_single.silu(embedded_t))
        for block in self.blocks:
            h = block(h, attention_mask=_mask_bias(token_mask), encoder_hidden_states=text,
                      encoder_attention_mask=_mask_bias(text_mask), timestep=t_emb)
        shift, scale = (self.scale_shift_table[None] + embedded_t[:, None]).chunk(2, dim=1)  # (B, 1, dim) each
        return self.proj_out(self.norm_out(h) * (1 + scale) + shift)
