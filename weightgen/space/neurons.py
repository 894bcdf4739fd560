"""Neuron sets: an MLP as one token per neuron plus the weight matrices between them, with no
architecture index anywhere.

An MLP in-h1-...-hL-k becomes
- `nodes` (N = h1 + ... + hL + k, F = in + 1): one token per hidden or output neuron. A neuron of the
  first hidden layer carries its incoming weights from the `in` input features (whose meaning is
  fixed: pixel p is pixel p in every network) and its bias; every other neuron carries only its bias
  (the rest of its row is padding, see `feature_mask`);
- `edges`: for every layer after the first, its weight matrix (n_l, n_{l-1}) between the tokens of
  two layers (for the last layer: output neurons x last hidden layer);
- node metadata (`NodeMeta`): depth from the input, depth from the output, the class an output neuron
  scores (the digit, so a new subset of digits composes from classes seen before), and log2 fan-in /
  fan-out.
Hidden neurons of one layer have no order: permuting them permutes their tokens and the matching
rows / columns of the adjacent edge matrices, and nothing else, so a model that treats tokens as a
set (attention with no order embedding, messages summed over edges) is permutation-equivariant by
construction. A width the zoo never had is just more or fewer tokens.

Statistics are per role, never per (arch, slot) (`RoleStats`): every weight is first multiplied by
sqrt(fan_in), the scale at which PyTorch initialises and which training roughly keeps, so one set
of statistics serves every width; then each role (first-layer weights, hidden-to-hidden weights,
hidden-to-output weights, first / deeper hidden biases, output biases) is standardised by one mean
and std fitted on a zoo.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from weightgen.errors import ArchError
from weightgen.specs import ArchSpec

ROLES = ("w_in", "w_hidden", "w_out", "b_first", "b_hidden", "b_out")
MAX_DEPTH = 8  # depth embeddings' size: MLPs of up to 7 hidden layers


def check_expressible(arch: ArchSpec, in_dim: int | None = None) -> None:
    """One sentence for an arch the neuron-set space cannot express (another family, another input
    size, no hidden layer, too deep)."""
    if arch.family != "mlp":
        raise ArchError(f"{arch.describe()} cannot be expressed as neuron sets: only MLPs can (for example "
                        "'MLP 64-48-3')")
    if len(arch.sizes) < 3:
        raise ArchError(f"{arch.describe()} has no hidden layer; neuron sets need at least one (e.g. 'MLP 64-32-3')")
    if len(arch.sizes) - 1 >= MAX_DEPTH:
        raise ArchError(f"{arch.describe()} has {len(arch.sizes) - 2} hidden layers; at most {MAX_DEPTH - 2} are supported")
    if in_dim is not None and arch.sizes[0] != in_dim:
        raise ArchError(f"{arch.describe()} reads {arch.sizes[0]} inputs, but this generator's networks read "
                        f"{in_dim} (the input features' meaning is fixed)")


@dataclass(frozen=True)
class NodeMeta:
    """Per-node structure of one arch: what a token means, for embedding."""

    depth_in: torch.Tensor  # (N,) long: 0 = first hidden layer, ..., L = output layer
    depth_out: torch.Tensor  # (N,) long: 0 = output layer, 1 = last hidden layer, ...
    fan: torch.Tensor  # (N, 2) float: log2 fan-in, log2 fan-out (outputs: fan-out 1)
    is_output: torch.Tensor  # (N,) bool


@dataclass(frozen=True)
class NeuronLayout:
    arch: ArchSpec

    def __post_init__(self):
        check_expressible(self.arch)

    @property
    def in_dim(self) -> int:
        return self.arch.sizes[0]

    @property
    def feature_dim(self) -> int:
        return self.in_dim + 1

    @functools.cached_property
    def slices(self) -> list[slice]:
        """The token range of every layer after the input: hidden layers, then the output layer."""
        out, start = [], 0
        for n in self.arch.sizes[1:]:
            out.append(slice(start, start + n))
            start += n
        return out

    @property
    def num_nodes(self) -> int:
        return self.slices[-1].stop

    @functools.cached_property
    def meta(self) -> NodeMeta:
        sizes, n_layers = self.arch.sizes, len(self.arch.sizes) - 1
        depth_in = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes[1:])])
        fan = [(sizes[i], sizes[i + 2] if i + 2 < len(sizes) else 1) for i in range(n_layers)]
        fan = torch.cat([torch.tensor([f], dtype=torch.float).log2().expand(n, 2) for f, n in zip(fan, sizes[1:])])
        return NodeMeta(depth_in, n_layers - 1 - depth_in, fan, depth_in == n_layers - 1)

    @functools.cached_property
    def feature_mask(self) -> torch.Tensor:
        """(N, F) bool: True where a node's feature slot holds a real weight."""
        mask = torch.zeros(self.num_nodes, self.feature_dim, dtype=torch.bool)
        mask[self.slices[0]] = True
        mask[:, -1] = True  # every neuron has a bias
        return mask

    @functools.cached_property
    def roles(self) -> tuple[torch.Tensor, list[int]]:
        """Role index (ROLES) of every node feature slot (N, F), and of every edge matrix."""
        node = torch.full((self.num_nodes, self.feature_dim), ROLES.index("w_in"))
        node[:, -1] = ROLES.index("b_hidden")
        node[self.slices[0], -1] = ROLES.index("b_first")
        node[self.slices[-1], -1] = ROLES.index("b_out")
        n_edges = len(self.slices) - 1
        edges = [ROLES.index("w_out" if i == n_edges - 1 else "w_hidden") for i in range(n_edges)]
        return node, edges

    @functools.cached_property
    def _fan_scale(self) -> tuple[torch.Tensor, list[float]]:
        """sqrt(fan_in) of every node feature slot (biases: 1) and of every edge matrix."""
        node = torch.ones(self.num_nodes, self.feature_dim)
        node[self.slices[0], :-1] = math.sqrt(self.in_dim)
        return node, [math.sqrt(n) for n in self.arch.sizes[1:-1]]

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """flat weights (B, P) -> nodes (B, N, F) (padding zero) and edges [(B, n_l, n_{l-1})]."""
        sd = self.arch.layout().unflatten(flat)
        n_layers = len(self.slices)
        nodes = flat.new_zeros(flat.shape[0], self.num_nodes, self.feature_dim)
        nodes[:, self.slices[0], :-1] = sd["layers.0.weight"]
        for i, s in enumerate(self.slices):
            nodes[:, s, -1] = sd[f"layers.{i}.bias"]
        edges = [sd[f"layers.{i}.weight"] for i in range(1, n_layers)]
        return nodes, edges

    def join(self, nodes: torch.Tensor, edges: list[torch.Tensor]) -> torch.Tensor:
        """The exact inverse of `split` (padding slots ignored): -> flat (B, P)."""
        sd = {"layers.0.weight": nodes[:, self.slices[0], :-1]}
        for i, s in enumerate(self.slices):
            sd[f"layers.{i}.bias"] = nodes[:, s, -1]
            if i:
                sd[f"layers.{i}.weight"] = edges[i - 1]
        return self.arch.layout().flatten(sd)

    def permute(self, nodes: torch.Tensor, edges: list[torch.Tensor], perms: list[torch.Tensor]):
        """Reorder the hidden neurons of layer l by perms[l] (new i = old perms[l][i]), for tests and
        augmentation: the network's function is unchanged."""
        order = torch.arange(self.num_nodes)
        for s, p in zip(self.slices[:-1], perms):
            order[s] = s.start + p
        edges = [e[:, :, perms[i]] for i, e in enumerate(edges)]
        edges = [e[:, perms[i + 1]] if i + 1 < len(perms) else e for i, e in enumerate(edges)]
        return nodes[:, order], edges


class RoleStats(nn.Module):
    """Per-role mean and std of fan-in-scaled weights (buffers, saved with the model that owns them)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(len(ROLES)))
        self.register_buffer("std", torch.ones(len(ROLES)))

    @torch.no_grad()
    def fit(self, batches: list[tuple[NeuronLayout, torch.Tensor, list[torch.Tensor]]]) -> None:
        """Fit on (layout, nodes, edges) of every training arch, raw (unscaled) weights."""
        values: list[list[torch.Tensor]] = [[] for _ in ROLES]
        for layout, nodes, edges in batches:
            node_scale, edge_scale = layout._fan_scale
            node_roles, edge_roles = layout.roles
            mask = layout.feature_mask
            scaled = nodes * node_scale
            for r in range(len(ROLES)):
                sel = mask & (node_roles == r)
                if sel.any():
                    values[r].append(scaled[:, sel].flatten())
            for e, r, s in zip(edges, edge_roles, edge_scale):
                values[r].append((e * s).flatten())
        for r, v in enumerate(values):
            if v:
                v = torch.cat(v).double()
                self.mean[r] = v.mean()
                self.std[r] = v.std().clamp_min(1e-6) if len(v) > 1 else 1.0

    def _node_affine(self, layout: NeuronLayout):
        roles = layout.roles[0].to(self.std.device)
        std = self.std[roles]
        return layout._fan_scale[0].to(self.std) / std, self.mean[roles] / std

    def standardize(self, layout: NeuronLayout, nodes: torch.Tensor, edges: list[torch.Tensor]):
        scale, shift = self._node_affine(layout)
        mask = layout.feature_mask.to(nodes.device)
        nodes = (nodes * scale - shift) * mask
        _, roles = layout.roles
        edges = [(e * s - self.mean[r]) / self.std[r] for e, r, s in zip(edges, roles, layout._fan_scale[1])]
        return nodes, edges

    def destandardize(self, layout: NeuronLayout, nodes: torch.Tensor, edges: list[torch.Tensor]):
        scale, shift = self._node_affine(layout)
        mask = layout.feature_mask.to(nodes.device)
        nodes = (nodes + shift) / scale * mask
        _, roles = layout.roles
        edges = [(e * self.std[r] + self.mean[r]) / s for e, r, s in zip(edges, roles, layout._fan_scale[1])]
        return nodes, edges


@functools.cache
def neuron_layout(arch: ArchSpec) -> NeuronLayout:
    return NeuronLayout(arch)


def output_classes(arch: ArchSpec, task) -> torch.Tensor:
    """(k,) long: the class each output neuron scores: a subset task's digits, else 0..k-1."""
    classes = getattr(task, "classes", ()) if task is not None else ()
    if len(classes) == arch.out_dim:
        return torch.tensor(classes, dtype=torch.long)
    return torch.arange(arch.out_dim)
