"""SetDiT: a permutation-equivariant denoiser over neuron sets (weightgen/space/neurons.py), built
from diffusers blocks, with no architecture index and no order within a layer.

Input: one network's standardised node tokens (B, N, F) and edge matrices [(B, n_l, n_{l-1})], noisy.
- Each node is embedded from its features plus what it means (`NodeMeta`): depth from the input and
  from the output, log fan-in / fan-out, and for an output neuron the class it scores.
- Every block first passes messages along the edge matrices, NFN-style (Zhou et al., 2023): a
  neuron receives the sum of its neighbours' states weighted by the (noisy) weights that join them,
  scaled by 1/sqrt(fan), in both directions. Then diffusers' `BasicTransformerBlock` with
  `ada_norm_single`: self-attention over all neurons (no position embedding, so equivariant to any
  permutation of a layer's neurons), cross-attention to the prompt's MiniLM tokens, and the timestep,
  pooled prompt and task code in the adaptive norms (as in DiT / PixArt-alpha).
- Output: a node head (B, N, F) and, per edge matrix, a pair head: the output for weight (a, c) is a
  small MLP of (P h_a + Q h_c + u x_ac), so each weight is predicted from the two neurons it joins.
Permuting the hidden neurons of the input permutes the output the same way (tests/test_neurons.py).
Nothing in the model is sized by an architecture: it serves any width and any depth below
`MAX_DEPTH`, including ones the zoo never had.
"""

from __future__ import annotations

import math

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.normalization import AdaLayerNormSingle
from torch import nn

from weightgen.generators.common import TextStatsMixin
from weightgen.generators.dit import _mask_bias, dit_blocks
from weightgen.space.neurons import MAX_DEPTH, NeuronLayout, RoleStats


class EdgeMessages(nn.Module):
    """Messages along every edge matrix, both directions: (h, edges) -> update of h (B, N, dim).

    An edge is either its noisy weight (B, hi, lo), which scales the whole message, or a feature
    vector (B, hi, lo, C) from `EdgeStream`, whose channel c gates the c-th of C slices of the
    message, so what flows along a weight depends on both neurons it joins, not only its value."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.to_out_side = nn.Linear(dim, dim)  # what an input-side neuron sends to the output side
        self.to_in_side = nn.Linear(dim, dim)
        self.mix = nn.Linear(dim, dim)
        nn.init.zeros_(self.mix.weight)  # each block starts as the identity
        nn.init.zeros_(self.mix.bias)

    @staticmethod
    def _send(e: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """e (B, m, n) or (B, m, n, C), v (B, n, dim) -> (B, m, dim), summed over n / sqrt(n)."""
        if e.dim() == 3:
            return e @ v / math.sqrt(e.shape[2])
        b, n, dim = v.shape
        v = v.view(b, n, e.shape[-1], dim // e.shape[-1])
        return torch.einsum("bmnc,bncd->bmcd", e, v).reshape(b, e.shape[1], dim) / math.sqrt(n)

    def forward(self, h: torch.Tensor, edges: list[torch.Tensor], slices: list[slice]) -> torch.Tensor:
        x = self.norm(h)
        msg = torch.zeros_like(h)
        for e, lo, hi in zip(edges, slices[:-1], slices[1:]):  # e (B, |hi|, |lo|[, C])
            e = e.to(h.dtype)
            msg[:, hi] += self._send(e, self.to_out_side(x[:, lo]))
            msg[:, lo] += self._send(e.transpose(1, 2), self.to_in_side(x[:, hi]))
        return h + self.mix(nn.functional.gelu(msg))


class EdgeStream(nn.Module):
    """Per-weight features updated every block from the two neurons each weight joins (as in graph
    metanetworks and NFT): f_ac <- f_ac + MLP(norm(f_ac) + P h_a + Q h_c). Node states alone must
    carry every neuron's identity for the pair heads; a weight between two hidden layers (whose
    deeper neurons carry only a bias) is then predicted poorly, and the edge stream lets each
    weight keep its own state. Equivariant: it is elementwise over (a, c)."""

    def __init__(self, dim: int, channels: int):
        super().__init__()
        self.norm, self.feat_norm = nn.LayerNorm(dim, elementwise_affine=False), nn.LayerNorm(channels)
        self.out_side, self.in_side = nn.Linear(dim, channels), nn.Linear(dim, channels, bias=False)
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(channels, channels))
        nn.init.zeros_(self.mlp[1].weight)
        nn.init.zeros_(self.mlp[1].bias)

    def forward(self, h: torch.Tensor, feats: list[torch.Tensor], slices: list[slice]) -> list[torch.Tensor]:
        x = self.norm(h)
        return [f + self.mlp(self.feat_norm(f) + self.out_side(x[:, hi])[:, :, None] + self.in_side(x[:, lo])[:, None])
                for f, lo, hi in zip(feats, slices[:-1], slices[1:])]


class PairHead(nn.Module):
    """Per-weight output from the two neurons it joins and its noisy value: a bilinear term (a weight
    matrix is, to first order, a product of what its two layers' neurons encode) plus a small MLP of
    the sum of both neurons' projections and the value."""

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.left, self.right = nn.Linear(dim, hidden), nn.Linear(dim, hidden, bias=False)
        self.value = nn.Parameter(torch.zeros(hidden))
        self.out = nn.Linear(hidden, 1)
        self.bi_left, self.bi_right = nn.Linear(dim, hidden), nn.Linear(dim, hidden)

    def forward(self, h_out: torch.Tensor, h_in: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        z = self.left(h_out)[:, :, None] + self.right(h_in)[:, None] + x[..., None] * self.value
        bilinear = self.bi_left(h_out) @ self.bi_right(h_in).transpose(1, 2) / self.bi_left.out_features**0.5
        return self.out(nn.functional.gelu(z)).squeeze(-1) + bilinear


class NeuronMeaning:
    """What the neuron-set models (SetDiT, and NeuronAR in neuron_ar.py) share: embedding what each
    neuron means, and the fixed probe inputs. `_add_meaning` registers the modules under the same
    names in both, so saved weights keep their keys."""

    def _add_meaning(self, dim: int, n_classes: int, probe_size: int, in_dim: int) -> None:
        self.depth_in, self.depth_out = nn.Embedding(MAX_DEPTH, dim), nn.Embedding(MAX_DEPTH, dim)
        self.class_embed = nn.Embedding(n_classes + 1, dim)  # last row: "not an output neuron"
        self.fan_proj = nn.Linear(2, dim)
        if probe_size:  # set by `set_probe` before training; saved with the model
            self.register_buffer("probe_x", torch.zeros(probe_size, in_dim))
            self.register_buffer("probe_y", torch.zeros(probe_size, dtype=torch.long))
            self.probe_proj = nn.Linear(n_classes, dim)

    def embed_nodes(self, layout: NeuronLayout, classes: torch.Tensor) -> torch.Tensor:
        """What every node means (B, N, dim); classes (B, k) long: the class of each output neuron."""
        meta, device = layout.meta, self.fan_proj.weight.device
        base = (self.depth_in(meta.depth_in.to(device)) + self.depth_out(meta.depth_out.clamp_max(MAX_DEPTH - 1).to(device))
                + self.fan_proj(meta.fan.to(device, self.dtype)))
        cls = torch.full((len(classes), layout.num_nodes), self.config.n_classes, device=device)
        cls[:, layout.slices[-1]] = classes.to(device).clamp(0, self.config.n_classes - 1)
        return base[None] + self.class_embed(cls)

    @torch.no_grad()
    def set_probe(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The fixed probe inputs (P, in_dim) and their classes (P,), P = config.probe_size."""
        self.probe_x.copy_(x)
        self.probe_y.copy_(y)


class SetDiT(ModelMixin, ConfigMixin, TextStatsMixin, NeuronMeaning):
    @register_to_config
    def __init__(
        self,
        in_dim: int = 64,  # input features of the networks (their meaning is fixed)
        n_classes: int = 10,  # output classes an output neuron may score
        num_layers: int = 4,
        num_attention_heads: int = 4,
        attention_head_dim: int = 32,
        text_dim: int = 384,
        task_code_dim: int = 0,  # > 0: the task's structure (weightgen.tasks.task_code) in the adaptive norms
        task_kinds: list[str] | None = None,  # kinds trained on (others are refused); None = any
        archs: list[dict] | None = None,  # the zoo's archs seen in training (for "seen / new"; not used to compute)
        edge_channels: int = 0,  # > 0: per-weight features updated every block (`EdgeStream`)
        staged: bool = False,  # leading layers may be given clean (`forward`'s `given`): layer-by-layer sampling
        probe_size: int = 0,  # > 0: every neuron also sees what it computes on that many fixed inputs (`probe_features`)
        self_cond: bool = False,  # also read the previous step's clean estimate (`forward`'s `prev`)
    ):
        super().__init__()
        dim = num_attention_heads * attention_head_dim
        feat = in_dim + 1
        self.proj_in = nn.Linear(feat, dim)
        self._add_meaning(dim, n_classes, probe_size, in_dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.null_text = nn.Parameter(torch.zeros(1, 1, text_dim))
        self.adaln_single = AdaLayerNormSingle(dim)
        self.pooled_proj = nn.Linear(text_dim, dim)
        self.code_proj = nn.Linear(task_code_dim, dim) if task_code_dim else None
        self.messages = nn.ModuleList(EdgeMessages(dim) for _ in range(num_layers))
        self.blocks = dit_blocks(dim, num_attention_heads, attention_head_dim, num_layers)
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.node_out = nn.Linear(dim, feat)
        self.edge_heads = nn.ModuleList([PairHead(dim), PairHead(dim)])  # hidden->hidden, hidden->output
        if edge_channels:
            if dim % edge_channels:
                raise ValueError(f"edge_channels ({edge_channels}) must divide the model width ({dim})")
            self.edge_in = nn.Linear(2 if self_cond else 1, edge_channels)
            self.streams = nn.ModuleList(EdgeStream(dim, edge_channels) for _ in range(num_layers))
            self.edge_feat_out = nn.ModuleList([nn.Linear(edge_channels, 1), nn.Linear(edge_channels, 1)])
        if self_cond:  # the previous clean estimate: its node features and (with probes) what it computes
            self.prev_proj = nn.Linear(feat, dim)
            self.prev_probe_proj = nn.Linear(n_classes, dim) if probe_size else None
        if staged:  # marks the tokens of layers given clean
            self.given_embed = nn.Parameter(torch.zeros(dim))
        self.stats = RoleStats()
        self._register_text_stats(text_dim)

    @torch.no_grad()
    def probe_features(self, layout: NeuronLayout, nodes: torch.Tensor, edges: list[torch.Tensor]) -> torch.Tensor:
        """(B, N, n_classes): each neuron's mean output per class on the probe inputs, read from the
        (noisy) weights as they are. Which class a neuron responds to is what its outgoing weights
        depend on, and for a neuron past the first layer it is a function of two or more weight
        matrices that attention over tokens would have to learn to compose; computing it is exact,
        equivariant (one value per neuron) and works for any width."""
        nodes, edges = self.stats.destandardize(layout, nodes.float(), [e.float() for e in edges])
        onehot = nn.functional.one_hot(self.probe_y, self.config.n_classes).float()
        onehot = onehot / onehot.sum(0).clamp_min(1)  # (P, C): class means
        x = self.probe_x.float().expand(len(nodes), -1, -1)
        acts = []
        for i, s in enumerate(layout.slices):
            w = nodes[:, s, :-1] if i == 0 else edges[i - 1]
            x = x @ w.transpose(1, 2) + nodes[:, s, -1][:, None]
            acts.append(x.transpose(1, 2) @ onehot)  # (B, n_l, C), before the ReLU: its sign matters too
            x = x.clamp_min(0)
        return torch.asinh(torch.cat(acts, dim=1))

    def null_prompt(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.null_text.expand(batch, 1, -1), torch.ones(batch, 1, dtype=torch.bool, device=self.null_text.device)

    def forward(self, layout: NeuronLayout, nodes: torch.Tensor, edges: list[torch.Tensor], timestep: torch.Tensor,
                text_tokens: torch.Tensor, text_mask: torch.Tensor, classes: torch.Tensor,
                task_code: torch.Tensor | None = None,
                given: torch.Tensor | None = None,
                prev: tuple[torch.Tensor, list[torch.Tensor]] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """nodes (B, N, F), edges [(B, n_l, n_{l-1})], timestep (B,), text (B, L, text_dim) + mask,
        classes (B, k) -> model output of the same shapes as (nodes, edges). A `staged` model also
        takes `given` (B,) long: how many leading layers (a layer: its neurons and the weights into
        them) are clean, the rest being noisy at `timestep` and denoised for them. A `self_cond`
        model also takes `prev`: its own clean estimate (nodes, edges) from the previous sampling
        step, standardised, or None (read as zeros) for the first step."""
        b = nodes.shape[0]
        mask = layout.feature_mask.to(nodes.device)
        h = self.proj_in(nodes * mask) + self.embed_nodes(layout, classes)
        if self.config.probe_size:
            h = h + self.probe_proj(self.probe_features(layout, nodes * mask, edges).to(h.dtype))
        if self.config.self_cond:
            # Self-conditioning (Chen et al., 2023, "Analog Bits"): probe features read from x_t are
            # noise at high t; read from the last clean estimate they say what the net computes.
            if prev is None:
                prev = torch.zeros_like(nodes), [torch.zeros_like(e) for e in edges]
            h = h + self.prev_proj(prev[0] * mask)
            if self.prev_probe_proj is not None:
                h = h + self.prev_probe_proj(self.probe_features(layout, prev[0] * mask, prev[1]).to(h.dtype))
        if self.config.staged and given is not None:
            clean = layout.meta.depth_in.to(h.device)[None] < given.to(h.device)[:, None]  # (B, N)
            h = h + clean[..., None].to(h.dtype) * self.given_embed
        text_tokens = self.standardize_text(text_tokens)
        text = self.text_proj(text_tokens)
        emb = self.adaln_single.emb(timestep, resolution=None, aspect_ratio=None, batch_size=b, hidden_dtype=h.dtype)
        weights = text_mask.to(text_tokens.dtype)[..., None]
        emb = emb + self.pooled_proj((text_tokens * weights).sum(1) / weights.sum(1).clamp_min(1))
        if self.code_proj is not None and task_code is not None:
            emb = emb + self.code_proj(task_code.to(emb.dtype))
        t_emb = self.adaln_single.linear(self.adaln_single.silu(emb))
        text_bias = _mask_bias(text_mask)
        feats = None
        if self.config.edge_channels:
            inputs = [e[..., None] for e in edges]
            if self.config.self_cond:
                inputs = [torch.cat([e, p[..., None].to(e)], -1) for e, p in zip(inputs, prev[1])]
            feats = [self.edge_in(e.to(h.dtype)) for e in inputs]
        for i, (messages, block) in enumerate(zip(self.messages, self.blocks)):
            if feats is not None:
                feats = self.streams[i](h, feats, layout.slices)
            h = messages(h, edges if feats is None else feats, layout.slices)
            h = block(h, encoder_hidden_states=text, encoder_attention_mask=text_bias, timestep=t_emb)
        shift, scale = (self.scale_shift_table[None] + emb[:, None]).chunk(2, dim=1)
        h = self.norm_out(h) * (1 + scale) + shift
        out_nodes = self.node_out(h) * mask
        out_edges = []
        n_edges = len(edges)
        for i, e in enumerate(edges):
            kind = 1 if i == n_edges - 1 else 0
            out = self.edge_heads[kind](h[:, layout.slices[i + 1]], h[:, layout.slices[i]], e.to(h.dtype))
            if feats is not None:
                out = out + self.edge_feat_out[kind](feats[i]).squeeze(-1)
            out_edges.append(out)
        return out_nodes, out_edges
