"""Architecture specs: the networks weightgen trains, describes in text, and generates.

An `ArchSpec` is a small frozen dataclass (family, sizes, activation). It gives
- `describe()`: the text used in prompts, e.g. "MLP 64-32-16-3, ReLU"; `parse()` reads it back;
- `build()`: an `nn.Module` whose state_dict keys are stable across versions;
- `layout()`: a `ParamLayout` that flattens a state_dict to one vector and back, exactly;
- `forward_batched()`: K networks of this arch evaluated at once as batched tensors, the kernel of
  the zoo trainer and of batched evaluation.

Families (a plain dict registry, keys are the names used in YAML and on the command line):
- `mlp`: sizes = (in, hidden..., out), any depth and width.
- `cnn`: sizes = (channels..., classes); 3x3 stride-2 convolutions on the 1x8x8 digits (8 -> 4 -> 2
  -> 1 pixels, so at most three conv layers), flattened into a linear head.
- `inr`: a coordinate MLP from (x, y) to one intensity: sizes = (2, hidden..., 1).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from weightgen.errors import ArchError

# Activation registry: config name -> (functional form, display name in arch text).
ACTIVATIONS = {
    "relu": (F.relu, "ReLU"),
    "gelu": (F.gelu, "GELU"),
    "tanh": (torch.tanh, "Tanh"),
}
FAMILIES = {"mlp": "MLP", "cnn": "CNN", "inr": "INR"}
IMAGE_SIDE = 8  # the digits images are 1x8x8
EXAMPLES = "'MLP 64-32-10, ReLU', 'CNN 8-16-10, GELU' or 'INR 2-32-32-1, Tanh'"

_ARCH_RE = re.compile(
    r"\b(mlp|cnn|inr)\s+(\d+(?:\s*[-x×]\s*\d+)+)(?:\s*,?\s*(?:with\s+)?(relu|gelu|tanh)\b)?",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of a network's parameters inside one flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @functools.cached_property
    def offsets(self) -> tuple[int, ...]:
        out, total = [], 0
        for shape in self.shapes:
            out.append(total)
            total += math.prod(shape)
        return tuple(out)

    @property
    def numel(self) -> int:
        return self.offsets[-1] + math.prod(self.shapes[-1])

    def flatten(self, state_dict: dict[str, torch.Tensor]) -> torch.Tensor:
        """state_dict of tensors (*lead, *shape) -> (*lead, P); `lead` may be empty or a batch."""
        missing = [n for n in self.names if n not in state_dict]
        if missing:
            raise ArchError(f"state_dict lacks parameters {missing} of this architecture")
        parts = []
        for name, shape in zip(self.names, self.shapes):
            t = state_dict[name]
            lead = t.shape[: t.dim() - len(shape)]
            if tuple(t.shape[len(lead):]) != shape:
                raise ArchError(f"parameter '{name}' has shape {tuple(t.shape)}, expected {shape}")
            parts.append(t.reshape(*lead, -1))
        return torch.cat(parts, dim=-1)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """(*lead, P) -> state_dict of (*lead, *shape); the exact inverse of `flatten`."""
        if flat.shape[-1] != self.numel:
            raise ArchError(f"flat weights have {flat.shape[-1]} values, this architecture has {self.numel}")
        lead = flat.shape[:-1]
        return {
            name: flat[..., off : off + math.prod(shape)].reshape(*lead, *shape)
            for name, shape, off in zip(self.names, self.shapes, self.offsets)
        }


class MLP(nn.Module):
    """Linear layers with an activation between them (none after the last). Also the INR body."""

    def __init__(self, sizes: tuple[int, ...], activation: str):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = ACTIVATIONS[activation][0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


class CNN(nn.Module):
    """3x3 stride-2 convolutions on flattened 8x8 images, then a linear head."""

    def __init__(self, sizes: tuple[int, ...], activation: str):
        super().__init__()
        channels = (1, *sizes[:-1])
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(channels[:-1], channels[1:])
        )
        side = IMAGE_SIDE >> len(self.convs)
        self.head = nn.Linear(channels[-1] * side * side, sizes[-1])
        self.act = ACTIVATIONS[activation][0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)  # (B, 64) -> (B, 1, 8, 8)
        for conv in self.convs:
            x = self.act(conv(x))
        return self.head(x.flatten(1))


@dataclass(frozen=True)
class ArchSpec:
    family: str
    sizes: tuple[int, ...]
    activation: str = "relu"

    def __post_init__(self):
        object.__setattr__(self, "sizes", tuple(int(s) for s in self.sizes))
        if self.family not in FAMILIES:
            raise ArchError(f"unknown architecture family '{self.family}'; known: {', '.join(FAMILIES)}")
        if self.activation not in ACTIVATIONS:
            raise ArchError(f"unknown activation '{self.activation}'; known: {', '.join(ACTIVATIONS)}")
        if len(self.sizes) < 2 or min(self.sizes) < 1:
            raise ArchError(f"{self.family} needs at least two positive sizes, got {self.sizes}")
        if self.family == "cnn" and len(self.sizes) - 1 > 3:
            raise ArchError("a cnn on 8x8 images has at most 3 stride-2 conv layers")
        if self.family == "inr" and (self.sizes[0] != 2 or self.sizes[-1] != 1):
            raise ArchError(f"an inr maps (x, y) to one intensity, so sizes must be 2-...-1, got {self.sizes}")

    # -- text ---------------------------------------------------------------------------------
    def describe(self) -> str:
        """Prompt text, e.g. 'MLP 64-32-16-3, ReLU'; `parse` reads it back."""
        sizes = "-".join(str(s) for s in self.sizes)
        return f"{FAMILIES[self.family]} {sizes}, {ACTIVATIONS[self.activation][1]}"

    @classmethod
    def parse(cls, text: str) -> ArchSpec:
        """Read an architecture text such as 'MLP 64-32-10, ReLU' (activation optional, ReLU default)."""
        spec, rest = find_arch(text)
        if spec is None or rest.strip(" ,.;"):
            raise ArchError(f"unknown architecture '{text.strip()}': expected text like {EXAMPLES}")
        return spec

    def to_dict(self) -> dict:
        return {"family": self.family, "sizes": list(self.sizes), "activation": self.activation}

    @classmethod
    def from_dict(cls, d: dict) -> ArchSpec:
        try:
            return cls(d["family"], tuple(d["sizes"]), d.get("activation", "relu"))
        except (KeyError, TypeError, ValueError) as e:
            raise ArchError(f"malformed architecture record {d!r}") from e

    @property
    def slug(self) -> str:
        """File-name-safe id, e.g. 'mlp-64-32-3-relu'."""
        return "-".join([self.family, *map(str, self.sizes), self.activation])

    @property
    def article(self) -> str:
        return "a" if self.family == "cnn" else "an"  # "an MLP", "an INR", "a CNN"

    @property
    def in_dim(self) -> int:
        return IMAGE_SIDE * IMAGE_SIDE if self.family == "cnn" else self.sizes[0]

    @property
    def out_dim(self) -> int:
        return self.sizes[-1]

    # -- modules and weights ------------------------------------------------------------------
    def build(self) -> nn.Module:
        module = (CNN if self.family == "cnn" else MLP)(self.sizes, self.activation)
        module.arch = self  # so a built module knows what it is (save_model reads it)
        return module

    def layout(self) -> ParamLayout:
        return _layout(self)

    def init_params(self, k: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """K fresh initialisations (K, *shape), drawn like PyTorch's default Linear/Conv2d init:
        U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases (kaiming_uniform with a=sqrt(5))."""
        layout, out = self.layout(), {}
        for name, shape in zip(layout.names, layout.shapes):
            weight_shape = layout.shapes[layout.names.index(name.rsplit(".", 1)[0] + ".weight")]
            bound = 1.0 / math.sqrt(math.prod(weight_shape[1:]))
            out[name] = (torch.rand(k, *shape, generator=generator) * 2 - 1) * bound
        return out

    def forward_batched(self, params: dict[str, torch.Tensor], x: torch.Tensor, transposed: bool = False) -> torch.Tensor:
        """K networks at once: params (K, *shape), x (K, B, in_dim) -> logits (K, B, out_dim).

        The same arithmetic as `build()(x)` for each network, done with one baddbmm or one grouped
        convolution per layer instead of a Python loop over networks. With `transposed`, linear
        weights are given as (K, in, out): the trainer keeps them so, because then the weight
        gradient leaves bmm contiguous instead of needing a slow strided transpose copy."""

        def linear(h, w, bias):
            return torch.baddbmm(bias.unsqueeze(1), h, w if transposed else w.transpose(1, 2))

        act = ACTIVATIONS[self.activation][0]
        if self.family == "cnn":
            k, b, _ = x.shape
            h = x.transpose(0, 1).reshape(b, k, IMAGE_SIDE, IMAGE_SIDE)  # (B, K*1, 8, 8)
            for i in range(len(self.sizes) - 1):
                w, bias = params[f"convs.{i}.weight"], params[f"convs.{i}.bias"]  # (K, Co, Ci, 3, 3)
                h = F.conv2d(h, w.flatten(0, 1), bias.flatten(), stride=2, padding=1, groups=k)
                h = act(h)  # (B, K*Co, s, s)
            h = h.reshape(b, k, -1).transpose(0, 1)  # (K, B, Co*s*s)
            return linear(h, params["head.weight"], params["head.bias"])
        n_layers = len(self.sizes) - 1
        h = x
        for i in range(n_layers):
            h = linear(h, params[f"layers.{i}.weight"], params[f"layers.{i}.bias"])  # (K, B, out)
            if i < n_layers - 1:
                h = act(h)
        return h


@functools.cache
def _layout(spec: ArchSpec) -> ParamLayout:
    sd = spec.build().state_dict()
    return ParamLayout(tuple(sd), tuple(tuple(t.shape) for t in sd.values()))


def find_arch(text: str) -> tuple[ArchSpec | None, str]:
    """Find an architecture text inside a prompt: returns (spec or None, the prompt without it).

    'classify digits 3, 5 and 8 with an MLP 64-32-3' -> (MLP 64-32-3 ReLU, 'classify digits 3, 5 and 8')
    """
    m = _ARCH_RE.search(text)
    if m is None:
        return None, text
    family = m.group(1).lower()
    sizes = tuple(int(s) for s in re.split(r"\s*[-x×]\s*", m.group(2)))
    spec = ArchSpec(family, sizes, (m.group(3) or "relu").lower())
    # drop the words that introduced the architecture ("with an", "using a") along with it
    before = re.sub(r"\b(?:with|using|as)\s+(?:an?\s+|the\s+)?$", "", text[: m.start()].rstrip() + " ")
    return spec, (before.rstrip() + " " + text[m.end():].lstrip()).strip()
