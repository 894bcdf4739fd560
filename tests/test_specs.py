"""ArchSpec and ParamLayout: text round trips, exact flatten/unflatten, batched forward == module forward."""

from __future__ import annotations

import math

import pytest
import torch

from weightgen.errors import ArchError
from weightgen.specs import ArchSpec, find_arch

ARCHS = [
    ArchSpec("mlp", (64, 10), "relu"),
    ArchSpec("mlp", (64, 32, 3), "relu"),
    ArchSpec("mlp", (13, 16, 8, 3), "gelu"),
    ArchSpec("mlp", (4, 8, 8, 8, 2), "tanh"),
    ArchSpec("cnn", (4, 3), "relu"),
    ArchSpec("cnn", (8, 16, 10), "gelu"),
    ArchSpec("cnn", (2, 4, 6, 5), "tanh"),
    ArchSpec("inr", (2, 32, 32, 1), "relu"),
    ArchSpec("inr", (2, 16, 1), "tanh"),
]
IDS = [a.slug for a in ARCHS]


def random_state_dict(arch: ArchSpec, *lead: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    layout = arch.layout()
    return {n: torch.randn(*lead, *s, generator=g) for n, s in zip(layout.names, layout.shapes)}


@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
def test_layout_matches_built_module(arch):
    module = arch.build()
    layout = arch.layout()
    assert list(layout.names) == list(module.state_dict())
    assert layout.numel == sum(p.numel() for p in module.parameters())
    # flatten follows the module's own parameter order
    flat = layout.flatten(module.state_dict())
    assert torch.equal(flat, torch.nn.utils.parameters_to_vector(module.parameters()))


@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
@pytest.mark.parametrize("lead", [(), (3,), (2, 5)], ids=["single", "batch", "batch2d"])
def test_flatten_unflatten_exact_round_trip(arch, lead):
    layout = arch.layout()
    sd = random_state_dict(arch, *lead)
    flat = layout.flatten(sd)
    assert flat.shape == (*lead, layout.numel)
    back = layout.unflatten(flat)
    assert list(back) == list(layout.names)
    for name in layout.names:
        assert torch.equal(back[name], sd[name])
    assert torch.equal(layout.flatten(back), flat)


@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
def test_batched_flatten_is_rowwise_flatten(arch):
    layout = arch.layout()
    sd = random_state_dict(arch, 3)
    flat = layout.flatten(sd)
    for i in range(3):
        assert torch.equal(flat[i], layout.flatten({n: t[i] for n, t in sd.items()}))


def test_layout_errors():
    arch = ArchSpec("mlp", (4, 3, 2))
    layout = arch.layout()
    sd = random_state_dict(arch)
    with pytest.raises(ArchError, match="layers.1.bias"):
        layout.flatten({n: t for n, t in sd.items() if n != "layers.1.bias"})
    with pytest.raises(ArchError, match="layers.0.weight"):
        layout.flatten({**sd, "layers.0.weight": torch.zeros(3, 5)})
    with pytest.raises(ArchError, match=str(layout.numel)):
        layout.unflatten(torch.zeros(layout.numel + 1))


@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
def test_describe_parse_round_trip(arch):
    text = arch.describe()
    assert ArchSpec.parse(text) == arch
    assert ArchSpec.parse(text.lower()) == arch
    assert ArchSpec.from_dict(arch.to_dict()) == arch


def test_describe_text():
    assert ArchSpec("mlp", (64, 32, 16, 3)).describe() == "MLP 64-32-16-3, ReLU"
    assert ArchSpec("cnn", (8, 16, 10), "gelu").describe() == "CNN 8-16-10, GELU"
    assert ArchSpec.parse("MLP 64-32-10") == ArchSpec("mlp", (64, 32, 10), "relu")
    assert ArchSpec.parse("inr 2x32x1 tanh") == ArchSpec("inr", (2, 32, 1), "tanh")


@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
def test_forward_batched_matches_module(arch):
    k, b = 3, 7
    params = random_state_dict(arch, k, seed=1)
    for name in params:
        params[name] = params[name] * 0.3  # keep activations in a range where tanh/gelu are not flat
    x = torch.randn(k, b, arch.in_dim, generator=torch.Generator().manual_seed(2))
    out = arch.forward_batched(params, x)
    assert out.shape == (k, b, arch.out_dim)
    for i in range(k):
        module = arch.build()
        module.load_state_dict({n: p[i] for n, p in params.items()})
        with torch.no_grad():
            ref = module(x[i])
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
def test_init_params_shapes_and_bounds(arch):
    layout = arch.layout()
    params = arch.init_params(5, torch.Generator().manual_seed(0))
    assert list(params) == list(layout.names)
    for name, shape in zip(layout.names, layout.shapes):
        p = params[name]
        assert p.shape == (5, *shape) and p.dtype == torch.float32
        weight_shape = layout.shapes[layout.names.index(name.rsplit(".", 1)[0] + ".weight")]
        bound = 1.0 / math.sqrt(math.prod(weight_shape[1:]))  # PyTorch's default Linear/Conv2d init
        assert p.abs().max() <= bound
        if p.numel() >= 20:  # uniform on [-bound, bound]: the extremes get close to the bound
            assert p.abs().max() > 0.5 * bound
        # every network gets its own draw
        assert not torch.equal(p[0], p[1])
    # the same generator seed gives the same draw
    again = arch.init_params(5, torch.Generator().manual_seed(0))
    assert all(torch.equal(params[n], again[n]) for n in params)
    # and the bounds are those of a freshly built module
    module = arch.build()
    for name, t in module.state_dict().items():
        weight_shape = layout.shapes[layout.names.index(name.rsplit(".", 1)[0] + ".weight")]
        assert t.abs().max() <= 1.0 / math.sqrt(math.prod(weight_shape[1:]))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Transformer 12-12-10",
        "MLP",
        "MLP 64",
        "MLP 64-32-10, Swish",
        "an MLP 64-32-10",
        "MLP 64-0-10",
        "CNN 4-8-16-32-10",
        "INR 3-32-1",
        "INR 2-32-3",
    ],
)
def test_unknown_arch_text_raises(text):
    with pytest.raises(ArchError):
        ArchSpec.parse(text)


def test_bad_spec_raises():
    with pytest.raises(ArchError, match="family"):
        ArchSpec("transformer", (4, 2))
    with pytest.raises(ArchError, match="activation"):
        ArchSpec("mlp", (4, 2), "swish")
    with pytest.raises(ArchError):
        ArchSpec.from_dict({"sizes": [4, 2]})


def test_find_arch_in_prompt():
    spec, rest = find_arch("classify handwritten digits 3, 5 and 8 with an MLP 64-32-3")
    assert spec == ArchSpec("mlp", (64, 32, 3), "relu")
    assert rest == "classify handwritten digits 3, 5 and 8"
    spec, rest = find_arch("tell 4s apart from 9s using a CNN 8-16-2, GELU please")
    assert spec == ArchSpec("cnn", (8, 16, 2), "gelu")
    assert rest == "tell 4s apart from 9s please"
    assert find_arch("classify digits 3 and 5") == (None, "classify digits 3 and 5")
