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
import numbers
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from weightgen.errors import ArchError, short

# Activation registry: config name -> (functional form, display name in arch text).
ACTIVATIONS = {
    "relu": (F.relu, "ReLU"),
    "gelu": (F.gelu, "GELU"),
    "tanh": (torch.tanh, "Tanh"),
}
FAMILIES = {"mlp": "MLP", "cnn": "CNN", "inr": "INR"}
IMAGE_SIDE = 8  # the digits images are 1x8x8
EXAMPLES = "'MLP 64-32-10, ReLU', 'CNN 8-16-10, GELU' or 'INR 2-32-32-1, Tanh'"
# Size caps, checked before anything is allocated: weightgen generates small networks, and an arch read
# from a file or a prompt ("MLP 64-1000000000-10") must not be able to ask for gigabytes.
MAX_WIDTH = 65_536  # one layer's width (or a cnn's channels)
MAX_LAYERS = 64
MAX_PARAMS = 2**26  # 67M parameters, 256 MiB in float32
# Weight dtypes: floating point that torch can compute with. Integers are not weights, and float8
# cannot be concatenated or evaluated by the CPU kernels used here.
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

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
            raise ArchError(f"state_dict lacks parameters {short(missing)} of this architecture")
        parts, leads = [], set()
        for name, shape in zip(self.names, self.shapes):
            t = state_dict[name]
            if not isinstance(t, torch.Tensor) or t.dtype not in WEIGHT_DTYPES:
                what = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
                raise ArchError(f"parameter '{name}' is {what}; weights must be float16, bfloat16, float32 or float64")
            lead = t.shape[: max(t.dim() - len(shape), 0)]
            if tuple(t.shape[len(lead):]) != shape:
                raise ArchError(f"parameter '{name}' has shape {tuple(t.shape)}, expected {shape}")
            leads.add(tuple(lead))
            parts.append(t.reshape(*lead, -1))
        if len(leads) > 1:  # a stray leading dimension on one tensor: no common batch shape to stack on
            raise ArchError(f"parameters have different leading (batch) dimensions {short(sorted(leads))}")
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
        # sizes are whole numbers: no bools, floats (inf, 1e300) or digit strings from a corrupt file
        sizes = self.sizes
        if not isinstance(sizes, (tuple, list)) or not all(
                isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in sizes):
            raise ArchError(f"architecture sizes must be a list of integers, got {short(sizes)}")
        if not 2 <= len(sizes) <= MAX_LAYERS + 1:
            raise ArchError(f"an architecture needs 2 to {MAX_LAYERS + 1} sizes, got {len(sizes)}")
        object.__setattr__(self, "sizes", tuple(int(s) for s in sizes))
        if not isinstance(self.family, str) or self.family not in FAMILIES:
            raise ArchError(f"unknown architecture family {short(self.family)}; known: {', '.join(FAMILIES)}")
        if not isinstance(self.activation, str) or self.activation not in ACTIVATIONS:
            raise ArchError(f"unknown activation {short(self.activation)}; known: {', '.join(ACTIVATIONS)}")
        if min(self.sizes) < 1:
            raise ArchError(f"{self.family} needs positive sizes, got {short(self.sizes)}")
        if max(self.sizes) > MAX_WIDTH:
            raise ArchError(f"layer sizes are capped at {MAX_WIDTH:,}, got {short(max(self.sizes))}")
        if self.family == "cnn" and len(self.sizes) - 1 > 3:
            raise ArchError("a cnn on 8x8 images has at most 3 stride-2 conv layers")
        if self.family == "inr" and (self.sizes[0] != 2 or self.sizes[-1] != 1):
            raise ArchError(f"an inr maps (x, y) to one intensity, so sizes must be 2-...-1, got {self.sizes}")
        if self.num_params > MAX_PARAMS:
            raise ArchError(f"{self.describe()} has {self.num_params:,} parameters, over the cap of {MAX_PARAMS:,}")

    @property
    def num_params(self) -> int:
        """Parameter count, by arithmetic (equal to `layout().numel`), so a size check allocates nothing."""
        if self.family == "cnn":
            channels = (1, *self.sizes[:-1])
            side = IMAGE_SIDE >> (len(channels) - 1)
            convs = sum((9 * a + 1) * b for a, b in zip(channels[:-1], channels[1:]))
            return convs + (channels[-1] * side * side + 1) * self.sizes[-1]
        return sum((a + 1) * b for a, b in zip(self.sizes[:-1], self.sizes[1:]))

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
        if not isinstance(d, dict) or "family" not in d or not isinstance(d.get("sizes"), (list, tuple)):
            raise ArchError(f"malformed architecture record {short(d)}")
        return cls(d["family"], tuple(d["sizes"]), d.get("activation", "relu"))

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
    with torch.device("meta"):  # shapes only: no memory, no init
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
    texts = re.split(r"\s*[-x×]\s*", m.group(2))
    if max(map(len, texts)) > len(str(MAX_WIDTH)):  # int() of thousands of digits refuses, and the cap would anyway
        raise ArchError(f"layer sizes are capped at {MAX_WIDTH:,}, got {short(max(texts, key=len), 40)}")
    sizes = tuple(int(s) for s in texts)
    spec = ArchSpec(family, sizes, (m.group(3) or "relu").lower())
    # drop the words that introduced the architecture ("with an", "using a") along with it
    before = re.sub(r"\b(?:with|using|as)\s+(?:an?\s+|the\s+)?$", "", text[: m.start()].rstrip() + " ")
    return spec, (before.rstrip() + " " + text[m.end():].lstrip()).strip()
