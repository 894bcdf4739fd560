"""TokenLayout: exact tokenize/detokenize round trips, zero padding, hand-checked metadata, and
hidden-unit permutations that move whole weight tokens."""

from __future__ import annotations

import pytest
import torch

from weightgen.space.layout import ROLES, TokenLayout
from weightgen.space.symmetry import num_hidden, permute
from weightgen.specs import ArchSpec

ARCHS = [
    ArchSpec("mlp", (64, 10), "relu"),
    ArchSpec("mlp", (64, 32, 3), "relu"),
    ArchSpec("mlp", (13, 16, 8, 3), "gelu"),
    ArchSpec("mlp", (4, 8, 8, 8, 2), "tanh"),
    ArchSpec("cnn", (4, 3), "relu"),
    ArchSpec("cnn", (8, 16, 10), "gelu"),
    ArchSpec("cnn", (2, 4, 6, 5), "tanh"),
    ArchSpec("inr", (2, 32, 32, 1), "relu"),
]
IDS = [a.slug for a in ARCHS]
WIDTHS = [3, 8, 64]
WEIGHT, BIAS = ROLES.index("weight"), ROLES.index("bias")


def _index(layout: TokenLayout) -> torch.Tensor:
    """(T, width) flat position of every slot, -1 for padding, read through the public API only:
    tokenize a vector whose value is its own index + 1 (padding comes out 0)."""
    numel = layout.arch.layout().numel
    return layout.tokenize(torch.arange(1, numel + 1, dtype=torch.float64)).long() - 1


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
@pytest.mark.parametrize("lead", [(), (3,), (2, 4)], ids=["single", "batch", "batch2d"])
def test_round_trip_is_exact_and_padding_is_zero(arch, width, lead):
    layout = TokenLayout(arch, width)
    flat = torch.randn(*lead, arch.layout().numel, generator=torch.Generator().manual_seed(0))
    tokens = layout.tokenize(flat)
    assert tokens.shape == (*lead, layout.num_tokens, width)
    assert torch.equal(layout.detokenize(tokens), flat)
    assert torch.all(tokens[..., ~layout.mask] == 0)
    # padding is ignored on the way back: garbage there changes nothing
    dirty = tokens + (~layout.mask).to(tokens.dtype) * 123.0
    assert torch.equal(layout.detokenize(dirty), flat)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
def test_every_flat_index_fills_exactly_one_real_slot(arch, width):
    layout = TokenLayout(arch, width)
    index = _index(layout)
    numel = arch.layout().numel
    assert torch.equal(index >= 0, layout.mask)
    real = index[layout.mask]
    assert torch.equal(real.sort().values, torch.arange(numel))  # each index once, none missing
    # padding only at the end of a token: a token is a contiguous chunk of one row
    assert torch.all(layout.mask[:, 1:] <= layout.mask[:, :-1])
    assert layout.mask.sum() == numel and layout.mask[:, 0].all()


def test_mlp_4_3_2_width_2_hand_counted():
    # layers.0.weight (3, 4): 3 rows x 2 chunks = 6 tokens   flat 0..11
    # layers.0.bias (3,):    1 row x 2 chunks  = 2 tokens   flat 12..14, one padding slot
    # layers.1.weight (2, 3): 2 rows x 2 chunks = 4 tokens  flat 15..20, one padding slot per row
    # layers.1.bias (2,):    1 token                        flat 21..22
    layout = TokenLayout(ArchSpec("mlp", (4, 3, 2)), 2)
    assert layout.num_tokens == 13
    expected_index = torch.tensor([
        [0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11],
        [12, 13], [14, -1],
        [15, 16], [17, -1], [18, 19], [20, -1],
        [21, 22],
    ])  # fmt: skip
    assert torch.equal(_index(layout), expected_index)
    expected_meta = torch.tensor([
        *[[0, WEIGHT, p] for p in range(6)],
        [0, BIAS, 0], [0, BIAS, 1],
        *[[1, WEIGHT, p] for p in range(4)],
        [1, BIAS, 0],
    ])  # fmt: skip
    assert layout.metadata.dtype == torch.long
    assert torch.equal(layout.metadata, expected_meta)
    assert layout.mask.sum() == 23 == ArchSpec("mlp", (4, 3, 2)).layout().numel


def test_cnn_head_is_the_layer_after_the_convs():
    # convs.0.weight (2, 1, 3, 3): rows of 9 -> 3 tokens of 4 each, x2 rows = 6; convs.0.bias: 1
    # head.weight (3, 2*4*4 = 32): 8 tokens per row x 3 = 24; head.bias: 1
    layout = TokenLayout(ArchSpec("cnn", (2, 3)), 4)
    meta = layout.metadata
    assert layout.num_tokens == 32
    counts = {(layer, role): int(((meta[:, 0] == layer) & (meta[:, 1] == role)).sum())
              for layer in (0, 1) for role in (WEIGHT, BIAS)}
    assert counts == {(0, WEIGHT): 6, (0, BIAS): 1, (1, WEIGHT): 24, (1, BIAS): 1}
    assert torch.equal(meta[meta[:, 0] == 1][:24, 2], torch.arange(24))


@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
def test_metadata_is_consistent(arch):
    layout = TokenLayout(arch, 5)
    meta = layout.metadata
    # an mlp/inr with sizes (in, ..., out) has len - 1 linears; a cnn has len - 1 convs plus a head
    n_layers = len(arch.sizes) if arch.family == "cnn" else len(arch.sizes) - 1
    assert meta.shape == (layout.num_tokens, 3)
    assert set(meta[:, 0].tolist()) == set(range(n_layers))
    for layer in range(n_layers):
        for role in (WEIGHT, BIAS):
            pos = meta[(meta[:, 0] == layer) & (meta[:, 1] == role), 2]
            assert torch.equal(pos, torch.arange(len(pos)))  # positions count up within a tensor


@pytest.mark.parametrize("width", [2, 3, 64])
@pytest.mark.parametrize(
    "arch",
    [ArchSpec("mlp", (5, 7, 4, 3)), ArchSpec("cnn", (3, 4, 2)), ArchSpec("inr", (2, 6, 5, 1))],
    ids=lambda a: a.slug,
)
def test_hidden_permutation_moves_whole_weight_tokens(arch, width):
    """Permuting layer l's hidden units (others fixed) reorders the token groups of its weight rows
    as blocks, leaves every other layer's weight tokens' rows intact, and changes nothing else."""
    layout = TokenLayout(arch, width)
    g = torch.Generator().manual_seed(1)
    flat = torch.randn(arch.layout().numel, generator=g)
    tokens, meta = layout.tokenize(flat), layout.metadata
    hidden = num_hidden(arch)
    for layer, h in enumerate(hidden):
        perm = torch.randperm(h, generator=g)
        assert not torch.equal(perm, torch.arange(h))
        perms = [perm if i == layer else torch.arange(n) for i, n in enumerate(hidden)]
        moved = layout.tokenize(permute(arch, flat, perms))
        rows_sel = (meta[:, 0] == layer) & (meta[:, 1] == WEIGHT)
        before = tokens[rows_sel].reshape(h, -1, width)  # (rows, chunks per row, width)
        after = moved[rows_sel].reshape(h, -1, width)
        assert torch.equal(after, before[perm])
        untouched = meta[:, 0] < layer  # earlier layers do not see this permutation
        assert torch.equal(moved[untouched], tokens[untouched])
        later = meta[:, 0] > layer + 1
        assert torch.equal(moved[later], tokens[later])
