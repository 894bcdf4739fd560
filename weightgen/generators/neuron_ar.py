"""NeuronAR: what the autoregressive generator over neuron sets (set_ar.py) learns, beside its
`transformers` causal LM: the quantised tokens, their canonical order, and the heads.

One network is one sequence of neurons (weightgen/space/neurons.py), one position per neuron, after
a prefix of prompt token states. Nothing is keyed to an architecture:
- **Order, canonical for a set.** Hidden neurons have no order, so each layer is sorted by what it
  holds: the first hidden layer by (template code, bias), deeper layers by bias; output neurons
  keep their class order. Permuting a network's hidden neurons gives the same sequence.
- **Quantised tokens.** A first-hidden-layer neuron (its 64 input weights and bias, in fixed input
  space) is one template code (k-means over the zoo's rows, `codebook_size` codes) plus one
  residual bin per coordinate. A deeper neuron is its bias bin plus one bin per incoming weight.
  Bins are per-role quantiles (`n_bins`), so every bin is used.
- **No positions.** The LM is run with every position id 0 (rotary at angle 0: no position signal;
  the causal mask alone orders the sequence). What a slot means comes from `embed_nodes`: depth
  from the input and the output, log fan-in / fan-out, the class an output neuron scores.
- **Slots.** The input at slot s is the meaning of neuron s plus the content of neuron s - 1
  (`content`: a deeper neuron's content sums its incoming weights times the content of the neurons
  they come from, so it says what it computes). The state h_s predicts neuron s: a first-layer
  neuron's code, then its residual bins given the code; a deeper neuron's bias bin and, for every
  neuron c of the layer below, the bin of weight (s, c) from h_s and c's own state (`pair_logits`).
  A weight matrix is therefore generated knowing the neurons it reads, as generated.
- **Probe features** (`probe_size` > 0): a neuron's content also holds its class-mean output on
  fixed training inputs, computed from the generated values themselves (exact: unlike a diffusion
  model's noisy x_t, every value an AR step reads is final), so the weights out of a neuron are
  chosen knowing which class it answers to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from weightgen.generators.common import TextStatsMixin
from weightgen.generators.set_dit import NeuronMeaning
from weightgen.space.neurons import ROLES, NeuronLayout, RoleStats

# quantisation streams: one set of bins each
STREAMS = ("w_in_residual", "b_first_residual", "w_hidden", "w_out", "b_hidden", "b_out")


@dataclass
class NeuronTokens:
    """A batch of networks of one arch as tokens, neurons in canonical order."""

    code: torch.Tensor  # (B, n_0) template code of each first-hidden-layer neuron
    residual: torch.Tensor  # (B, n_0, F) residual bin of each coordinate of its row
    bias: list[torch.Tensor]  # per later layer, (B, n_l) bias bins
    weight: list[torch.Tensor]  # per later layer, (B, n_l, n_{l-1}) bins of the weights into it


def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """(k, F) centres of x (M, F) by Lloyd's algorithm from a k-means++-style random start."""
    g = torch.Generator().manual_seed(seed)
    k = min(k, len(x))
    centres = x[torch.randperm(len(x), generator=g)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x)[:, None]
        empty = counts[:, 0] == 0  # an empty cluster restarts at a random row
        centres = torch.where(empty[:, None], x[torch.randint(len(x), (k,), generator=g)], sums / counts.clamp_min(1))
    return centres


class NeuronAR(ModelMixin, ConfigMixin, TextStatsMixin, NeuronMeaning):
    @register_to_config
    def __init__(
        self,
        in_dim: int = 64,
        n_classes: int = 10,
        hidden_size: int = 128,  # the LM's width
        text_dim: int = 384,
        prefix_len: int = 32,  # prompt token states kept as prefix
        task_code_dim: int = 0,  # > 0: the task's structure (weightgen.tasks.task_code) conditions every slot
        task_kinds: list[str] | None = None,
        archs: list[dict] | None = None,  # the zoo's archs seen in training (for "seen / new" only)
        n_bins: int = 64,
        codebook_size: int = 256,
        probe_size: int = 0,  # > 0: a neuron's content includes its class-mean output on that many fixed inputs
    ):
        super().__init__()
        dim, feat = hidden_size, in_dim + 1
        self.text_proj = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.null_text = nn.Parameter(torch.zeros(1, 1, text_dim))
        self.cond_proj = nn.Linear(text_dim, dim)  # the pooled prompt, added to every slot
        self.code_proj = nn.Linear(task_code_dim, dim) if task_code_dim else None
        self._add_meaning(dim, n_classes, probe_size, in_dim)
        self.bos = nn.Parameter(torch.zeros(dim))  # the content before the first neuron
        self.row_in, self.bias_in, self.edge_value = nn.Linear(feat, dim), nn.Linear(1, dim), nn.Linear(dim, dim)
        self.code_head, self.code_embed = nn.Linear(dim, codebook_size), nn.Embedding(codebook_size, dim)
        self.residual_head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, feat * n_bins))
        self.bias_head = nn.Linear(dim, n_bins)
        self.pair_q, self.pair_k, self.pair_e = nn.Linear(dim, dim), nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.pair_out = nn.Sequential(nn.GELU(), nn.Linear(dim, n_bins))
        self.register_buffer("codebook", torch.zeros(codebook_size, feat))
        self.register_buffer("bin_edges", torch.zeros(len(STREAMS), n_bins - 1))
        self.register_buffer("bin_centres", torch.zeros(len(STREAMS), n_bins))
        self.stats = RoleStats()
        self._register_text_stats(text_dim)

    # ---- the tokens: fitted once on the (standardised) zoo, then fixed ----

    @torch.no_grad()
    def fit_tokens(self, sets: list[tuple[NeuronLayout, torch.Tensor, list[torch.Tensor]]], seed: int = 0) -> None:
        """Codebook and per-stream quantile bins from standardised (layout, nodes, edges) of every arch."""
        rows = torch.cat([nodes[:, layout.slices[0]].reshape(-1, layout.feature_dim) for layout, nodes, _ in sets])
        sub = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:50_000]]
        self.codebook.copy_(kmeans(sub, self.config.codebook_size, seed=seed))
        residual = rows - self.codebook[self.nearest_code(rows)]
        values = {"w_in_residual": [residual[:, :-1].flatten()], "b_first_residual": [residual[:, -1]]}
        for layout, nodes, edges in sets:
            for i, s in enumerate(layout.slices[1:], start=1):
                bias_role, weight_role = self.layer_roles(layout, i)
                values.setdefault(bias_role, []).append(nodes[:, s, -1].flatten())
                values.setdefault(weight_role, []).append(edges[i - 1].flatten())
        q = torch.linspace(0, 1, self.config.n_bins + 1, dtype=torch.double)
        for j, name in enumerate(STREAMS):
            v = torch.cat(values.get(name) or [torch.zeros(1)]).double()
            v = v[torch.randperm(len(v), generator=torch.Generator().manual_seed(seed))[:2_000_000]].sort().values
            qs = torch.quantile(v, q.to(v))
            self.bin_edges[j] = qs[1:-1].float()
            idx = torch.bucketize(v, qs[1:-1])
            sums = torch.zeros(self.config.n_bins, dtype=torch.double).index_add_(0, idx, v)
            counts = torch.bincount(idx, minlength=self.config.n_bins).double()
            centre = torch.where(counts > 0, sums / counts.clamp_min(1), (qs[:-1] + qs[1:]) / 2)
            self.bin_centres[j] = centre.float()

    def nearest_code(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.cdist(rows.float(), self.codebook.float()).argmin(-1)

    def quantise(self, values: torch.Tensor, stream: str | torch.Tensor) -> torch.Tensor:
        """Bin index of every value; `stream` a name, or a tensor of stream indices broadcast with values."""
        j = STREAMS.index(stream) if isinstance(stream, str) else stream
        if isinstance(j, int):
            return torch.bucketize(values.contiguous(), self.bin_edges[j].to(values))
        out = torch.empty_like(values, dtype=torch.long)
        for k in j.unique().tolist():
            sel = (j == k).expand_as(values)
            out[sel] = torch.bucketize(values[sel].contiguous(), self.bin_edges[k].to(values))
        return out

    def dequantise(self, bins: torch.Tensor, stream: str | torch.Tensor) -> torch.Tensor:
        j = STREAMS.index(stream) if isinstance(stream, str) else stream
        return self.bin_centres[j, bins] if isinstance(j, int) else self.bin_centres[j.expand_as(bins), bins]

    def row_streams(self) -> torch.Tensor:
        """(F,) stream of every coordinate of a first-layer row: input weights, then the bias."""
        s = torch.full((self.config.in_dim + 1,), STREAMS.index("w_in_residual"), device=self.bin_edges.device)
        s[-1] = STREAMS.index("b_first_residual")
        return s

    @torch.no_grad()
    def canonical(self, layout: NeuronLayout, nodes: torch.Tensor, edges: list[torch.Tensor]):
        """Sort each network's hidden neurons (see the module docstring): (B, N, F), [(B, n_l, n_{l-1})]
        -> the same network, neurons in canonical order. The function it computes is unchanged."""
        order = []
        for i, s in enumerate(layout.slices[:-1]):
            o = nodes[:, s, -1].argsort(dim=1)  # by bias ...
            if i == 0:  # ... then, stably, by template code: exact, with no mixed key to round
                code = self.nearest_code(nodes[:, s]).gather(1, o)
                o = o.gather(1, code.argsort(dim=1, stable=True))
            order.append(o)
        idx = torch.arange(layout.num_nodes, device=nodes.device).expand(len(nodes), -1).clone()
        for s, o in zip(layout.slices[:-1], order):
            idx[:, s] = s.start + o
        nodes = nodes.gather(1, idx[..., None].expand_as(nodes))
        out = []
        for i, e in enumerate(edges):  # e: (B, n_{i+1}, n_i): columns follow layer i, rows layer i + 1
            e = e.gather(2, order[i][:, None].expand_as(e))
            if i + 1 < len(order):
                e = e.gather(1, order[i + 1][:, :, None].expand_as(e))
            out.append(e)
        return nodes, out

    def layer_roles(self, layout: NeuronLayout, i: int) -> tuple[str, str]:
        """(bias role, weight role) of layer i >= 1: also the names of their quantisation streams."""
        return ("b_out", "w_out") if i == len(layout.slices) - 1 else ("b_hidden", "w_hidden")

    @torch.no_grad()
    def tokenize(self, layout: NeuronLayout, nodes: torch.Tensor, edges: list[torch.Tensor]) -> NeuronTokens:
        """Standardised networks (any neuron order) -> their tokens."""
        nodes, edges = self.canonical(layout, nodes, edges)
        rows = nodes[:, layout.slices[0]]
        code = self.nearest_code(rows)
        residual = self.quantise(rows - self.codebook[code], self.row_streams())
        bias = [self.quantise(nodes[:, s, -1], self.layer_roles(layout, i)[0]) for i, s in enumerate(layout.slices) if i]
        weight = [self.quantise(e, self.layer_roles(layout, i + 1)[1]) for i, e in enumerate(edges)]
        return NeuronTokens(code, residual, bias, weight)

    def values(self, layout: NeuronLayout, tok: NeuronTokens) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Tokens -> (first-layer rows (B, n_0, F), later biases [(B, n_l)], weights [(B, n_l, n_{l-1})]),
        standardised: exactly what sampling feeds back."""
        rows = self.codebook[tok.code] + self.dequantise(tok.residual, self.row_streams())
        bias = [self.dequantise(b, self.layer_roles(layout, i + 1)[0]) for i, b in enumerate(tok.bias)]
        weight = [self.dequantise(w, self.layer_roles(layout, i + 1)[1]) for i, w in enumerate(tok.weight)]
        return rows, bias, weight

    def to_network(self, layout: NeuronLayout, rows, bias, weight) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Standardised values -> standardised (nodes (B, N, F), edges), for `stats.destandardize`."""
        nodes = rows.new_zeros(len(rows), layout.num_nodes, layout.feature_dim)
        nodes[:, layout.slices[0]] = rows
        for s, b in zip(layout.slices[1:], bias):
            nodes[:, s, -1] = b
        return nodes * layout.feature_mask.to(nodes.device), list(weight)

    # ---- the conditioning, the slots and the heads, shared by training and sampling ----

    def prefix(self, text: torch.Tensor, text_mask: torch.Tensor, task_code: torch.Tensor | None):
        """(prefix embeddings (B, prefix_len, dim), their mask (B, prefix_len), per-slot condition (B, dim))."""
        p = self.config.prefix_len
        text, text_mask = text[:, :p], text_mask[:, :p]
        text = nn.functional.pad(text, (0, 0, 0, p - text.shape[1]))
        text_mask = nn.functional.pad(text_mask, (0, p - text_mask.shape[1]))
        text = self.standardize_text(text.to(self.dtype))
        w = text_mask.to(text.dtype)[..., None]
        cond = self.cond_proj((text * w).sum(1) / w.sum(1).clamp_min(1))
        if self.code_proj is not None and task_code is not None:
            cond = cond + self.code_proj(task_code.to(cond.dtype))
        return self.text_proj(text) * w, text_mask, cond

    def _raw(self, values: torch.Tensor, role: str, fan: int = 1) -> torch.Tensor:
        """Standardised values of one role -> the network's own weights (RoleStats.destandardize)."""
        r = ROLES.index(role)
        return (values * self.stats.std[r] + self.stats.mean[r]) / math.sqrt(fan)

    def _with_probe(self, content: torch.Tensor, pre: torch.Tensor | None):
        """Adds what a layer's neurons compute on the probe inputs (pre-activations (B, n, P)): their
        class means, which say which class each neuron answers to (exact: the values are clean).
        Returns (content, post-ReLU activations for the layer above)."""
        if pre is None:
            return content, None
        onehot = nn.functional.one_hot(self.probe_y, self.config.n_classes).to(pre.dtype)
        means = torch.asinh(pre @ (onehot / onehot.sum(0).clamp_min(1)))
        return content + self.probe_proj(means.to(content.dtype)), pre.clamp_min(0)

    def first_content(self, rows: torch.Tensor):
        """First-layer rows (B, n, F) -> (content (B, n, dim), probe activations or None)."""
        pre = None
        if self.config.probe_size:
            w, b = self._raw(rows[..., :-1], "w_in", rows.shape[-1] - 1), self._raw(rows[..., -1], "b_first")
            pre = w.float() @ self.probe_x.float().T + b.float()[..., None]
        return self._with_probe(self.row_in(rows.to(self.dtype)), pre)

    def deep_content(self, bias: torch.Tensor, weights: torch.Tensor, below: torch.Tensor,
                     below_acts: torch.Tensor | None, roles: tuple[str, str]):
        """bias (B, n), weights (B, n, m) from the m neurons below with content below (B, m, dim) and
        probe activations below_acts (B, m, P); roles: (bias role, weight role)."""
        msg = weights.to(self.dtype) @ self.edge_value(below) / math.sqrt(below.shape[1])
        pre = None
        if below_acts is not None:
            w, b = self._raw(weights, roles[1], weights.shape[-1]), self._raw(bias, roles[0])
            pre = w.float() @ below_acts.float() + b.float()[..., None]
        return self._with_probe(self.bias_in(bias.to(self.dtype)[..., None]) + msg, pre)

    def contents(self, layout: NeuronLayout, rows: torch.Tensor, bias: list[torch.Tensor],
                 weight: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every layer's content (B, n_l, dim), from the first layer up."""
        content, acts = self.first_content(rows)
        out = [content]
        for i, (b, w) in enumerate(zip(bias, weight), start=1):
            content, acts = self.deep_content(b, w, out[-1], acts, self.layer_roles(layout, i))
            out.append(content)
        return out

    def keys(self, states_after: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        """What a neuron offers the pair heads of the layer above: the LM state that has read it
        (the slot after it) and its content."""
        return self.pair_k(states_after) + self.pair_e(content)

    def pair_logits(self, h: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """h (B, n, dim), keys (B, m, dim) -> (B, n, m, n_bins): the bin of every weight (a, c)."""
        return self.pair_out(self.pair_q(h)[:, :, None] + keys[:, None])

    def residual_logits(self, h: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """h (B, n, dim), code (B, n) -> (B, n, F, n_bins)."""
        out = self.residual_head(h + self.code_embed(code))
        return out.unflatten(-1, (self.config.in_dim + 1, self.config.n_bins))


def run_lm(lm, embeds: torch.Tensor, attention_mask: torch.Tensor, cache=None) -> torch.Tensor:
    """The causal LM over embeddings with every position id 0 (no position signal, see above)."""
    positions = torch.zeros(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    out = lm(inputs_embeds=embeds, attention_mask=attention_mask.long(), position_ids=positions, cache=cache,
             use_cache=cache is not None)
    return out.last_hidden_state


def teacher_forced_logits(lm, heads: NeuronAR, layout: NeuronLayout, tok: NeuronTokens, text: torch.Tensor,
                          text_mask: torch.Tensor, task_code: torch.Tensor | None,
                          classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Every token's logits given all tokens before it, in one LM pass: (code (B, n_0, K), residual
    (B, n_0, F, n_bins), bias [(B, n_l, n_bins)], weight [(B, n_l, n_{l-1}, n_bins)])."""
    prefix, prefix_mask, cond = heads.prefix(text, text_mask, task_code)
    contents = heads.contents(layout, *heads.values(layout, tok))
    content = torch.cat(contents, 1)
    shifted = torch.cat([heads.bos.expand(len(content), 1, -1), content[:, :-1]], 1)
    slots = heads.embed_nodes(layout, classes) + cond[:, None] + shifted
    h = run_lm(lm, torch.cat([prefix, slots], 1), torch.cat([prefix_mask, torch.ones_like(slots[..., 0])], 1))
    h = h[:, prefix.shape[1]:]
    first = layout.slices[0]
    bias, weight = [], []
    for i, s in enumerate(layout.slices[1:]):
        below = layout.slices[i]
        weight.append(heads.pair_logits(h[:, s], heads.keys(h[:, below.start + 1 : below.stop + 1], contents[i])))
        bias.append(heads.bias_head(h[:, s]))
    return heads.code_head(h[:, first]), heads.residual_logits(h[:, first], tok.code), bias, weight


def teacher_forced_loss(lm, heads: NeuronAR, layout: NeuronLayout, tok: NeuronTokens, text: torch.Tensor,
                        text_mask: torch.Tensor, task_code: torch.Tensor | None, classes: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every token of a batch of one arch: the mean over first-layer codes plus the
    mean over all value tokens (residual, bias and weight bins)."""
    code, residual, bias, weight = teacher_forced_logits(lm, heads, layout, tok, text, text_mask, task_code, classes)
    ce = nn.functional.cross_entropy
    values = [(residual, tok.residual), *zip(bias, tok.bias), *zip(weight, tok.weight)]
    total = sum(ce(logits.flatten(0, -2).float(), target.flatten(), reduction="sum") for logits, target in values)
    return ce(code.flatten(0, -2).float(), tok.code.flatten()) + total / sum(t.numel() for _, t in values)
