"""TokenStats: fitted statistics centre every slot and scale every (layer, role) tensor to unit std,
`normalize`/`denormalize` are inverses on real slots, unknown archs fail clearly, state_dicts load."""

from __future__ import annotations

import pytest
import torch

from weightgen.errors import ArchError
from weightgen.space.layout import TokenLayout
from weightgen.space.normalize import TokenStats
from weightgen.specs import ArchSpec

WIDTH = 4
MLP = ArchSpec("mlp", (6, 5, 3), "relu")
CNN = ArchSpec("cnn", (3, 4, 2), "gelu")
INR = ArchSpec("inr", (2, 8, 1), "tanh")
ARCHS = [MLP, CNN, INR]


def zoo_tokens(arch: ArchSpec, n: int = 64, seed: int = 0) -> torch.Tensor:
    """(n, T, width) tokens of random weights whose mean and scale differ per slot and per tensor,
    like a trained zoo: a shared offset per weight plus layer-dependent spread."""
    g = torch.Generator().manual_seed(seed)
    layout = arch.layout()
    parts = []
    for i, shape in enumerate(layout.shapes):
        offset = torch.randn(shape, generator=g)
        parts.append((offset + (0.1 + i) * torch.randn(n, *shape, generator=g)).flatten(1))
    return TokenLayout(arch, WIDTH).tokenize(torch.cat(parts, 1))


@pytest.fixture(scope="module")
def fitted() -> TokenStats:
    stats = TokenStats(ARCHS, WIDTH)
    for arch in ARCHS:
        stats.fit(arch, zoo_tokens(arch))
    return stats


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.slug)
def test_normalized_zoo_is_centred_and_unit_scale(fitted, arch):
    layout = TokenLayout(arch, WIDTH)
    tokens = zoo_tokens(arch)
    out = fitted.normalize(arch, tokens)  # (N, T, width)
    mask = layout.mask
    assert torch.all(out[:, ~mask] == 0)
    # ~zero mean in every real slot
    assert out.mean(0)[mask].abs().max() < 1e-4
    # unit std over each (layer, role) tensor: std is fitted as the RMS around the slot means
    meta = layout.metadata
    groups = {(int(layer), int(role)) for layer, role in meta[:, :2]}
    assert len(groups) == 2 * (len(arch.sizes) if arch.family == "cnn" else len(arch.sizes) - 1)
    for layer, role in groups:
        sel = (meta[:, 0] == layer) & (meta[:, 1] == role)
        values = out[:, sel][:, mask[sel]]  # real values of that tensor, all models
        assert values.pow(2).mean().sqrt().item() == pytest.approx(1.0, abs=1e-4)
    # the input really had other scales, so this is not vacuous
    raw = tokens[:, mask]
    assert raw.std().item() > 1.5


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.slug)
def test_denormalize_inverts_normalize(fitted, arch):
    layout = TokenLayout(arch, WIDTH)
    tokens = zoo_tokens(arch, n=5, seed=1)  # unseen models
    back = fitted.denormalize(arch, fitted.normalize(arch, tokens))
    torch.testing.assert_close(back, tokens, atol=1e-5, rtol=1e-5)
    assert torch.all(back[:, ~layout.mask] == 0)
    # denormalize of anything keeps padding at zero, so detokenize sees only real values
    noisy = fitted.denormalize(arch, torch.randn(2, layout.num_tokens, WIDTH))
    assert torch.all(noisy[:, ~layout.mask] == 0)
    flat = layout.detokenize(back)
    torch.testing.assert_close(flat, layout.detokenize(tokens), atol=1e-5, rtol=1e-5)


def test_archs_get_their_own_statistics(fitted):
    """Fitting one arch leaves the others' statistics alone (buffers are per arch)."""
    stats = TokenStats(ARCHS, WIDTH)
    for arch in ARCHS:
        stats.fit(arch, zoo_tokens(arch))
    before = {k: v.clone() for k, v in stats.state_dict().items()}
    stats.fit(MLP, 10 * zoo_tokens(MLP, seed=3))
    after = stats.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"mean_0", "std_0"}


def test_unfitted_arch_raises_arch_error_naming_it(fitted):
    other = ArchSpec("mlp", (6, 7, 3), "relu")
    layout = TokenLayout(other, WIDTH)
    tokens = torch.zeros(1, layout.num_tokens, WIDTH)
    for call in (fitted.normalize, fitted.denormalize, fitted.fit, lambda a, _: fitted.layout(a)):
        with pytest.raises(ArchError, match="MLP 6-7-3, ReLU"):
            call(other, tokens)
    # same sizes, other activation: a different arch too
    with pytest.raises(ArchError, match="GELU"):
        fitted.layout(ArchSpec("mlp", (6, 5, 3), "gelu"))


def test_state_dict_round_trip(fitted):
    fresh = TokenStats(ARCHS, WIDTH)
    tokens = {a.slug: zoo_tokens(a, n=3, seed=2) for a in ARCHS}
    assert not torch.equal(fresh.normalize(MLP, tokens[MLP.slug]), fitted.normalize(MLP, tokens[MLP.slug]))
    fresh.load_state_dict(fitted.state_dict())
    for arch in ARCHS:
        assert torch.equal(fresh.normalize(arch, tokens[arch.slug]), fitted.normalize(arch, tokens[arch.slug]))
        assert torch.equal(fresh.denormalize(arch, tokens[arch.slug]), fitted.denormalize(arch, tokens[arch.slug]))


def test_padding_does_not_enter_the_statistics():
    """Garbage in padding slots of the fitting data changes neither mean nor std."""
    layout = TokenLayout(MLP, WIDTH)
    assert (~layout.mask).any()
    clean = zoo_tokens(MLP)
    dirty = clean + (~layout.mask).float() * 1e3
    a, b = TokenStats([MLP], WIDTH), TokenStats([MLP], WIDTH)
    a.fit(MLP, clean)
    b.fit(MLP, dirty)
    assert torch.equal(a.mean_0, b.mean_0) and torch.equal(a.std_0, b.std_0)


def test_repeated_arch_is_handled():
    stats = TokenStats([MLP, CNN, MLP], WIDTH)
    stats.fit(MLP, zoo_tokens(MLP))
    out = stats.normalize(MLP, zoo_tokens(MLP))
    assert out.shape[1] == TokenLayout(MLP, WIDTH).num_tokens
