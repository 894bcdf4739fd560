"""Permutation symmetry: permutations keep a network's function, weight matching undoes them exactly,
canonicalisation pulls a permuted population together; `zoo_weights` on the debug zoo."""

from __future__ import annotations

import pytest
import torch

from weightgen.errors import ZooError
from weightgen.evaluate import evaluate_flat
from weightgen.space.dataset import zoo_weights
from weightgen.space.symmetry import canonicalize, match, num_hidden, permute, random_permutation
from weightgen.specs import ArchSpec
from weightgen.tasks import get_task

ARCHS = [
    ArchSpec("mlp", (5, 7, 3), "relu"),
    ArchSpec("mlp", (5, 6, 7, 3), "gelu"),
    ArchSpec("mlp", (5, 6, 7, 8, 3), "tanh"),
    ArchSpec("cnn", (3, 2), "relu"),
    ArchSpec("cnn", (3, 4, 2), "gelu"),
    ArchSpec("cnn", (3, 4, 5, 2), "tanh"),
    ArchSpec("inr", (2, 8, 8, 1), "relu"),
]
IDS = [a.slug for a in ARCHS]
# nets where weight matching reliably recovers a permuted copy: one hidden layer (a single exact
# assignment problem) or zoo-sized widths; narrow deep nets are checked over many seeds below
ALIGNABLE = [
    ArchSpec("mlp", (5, 7, 3), "relu"),
    ArchSpec("cnn", (3, 2), "relu"),
    ArchSpec("mlp", (64, 32, 16, 3), "gelu"),
    ArchSpec("cnn", (8, 16, 10), "tanh"),
    ArchSpec("inr", (2, 32, 32, 1), "relu"),
]


def init_flat(arch: ArchSpec, n: int, seed: int = 0) -> torch.Tensor:
    """(n, P) weights at PyTorch's default init scale."""
    params = arch.init_params(n, torch.Generator().manual_seed(seed))
    return arch.layout().flatten(params)


def outputs(arch: ArchSpec, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N, P) weights, x (B, in_dim) -> (N, B, out) through the batched forward."""
    return arch.forward_batched(arch.layout().unflatten(flat), x.expand(len(flat), *x.shape))


def module_outputs(arch: ArchSpec, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(P,) weights -> (B, out) through an ordinary `build()` module."""
    module = arch.build()
    module.load_state_dict(arch.layout().unflatten(flat))
    with torch.no_grad():
        return module(x)


def mean_pairwise_distance(flat: torch.Tensor) -> float:
    n = len(flat)
    return (torch.cdist(flat, flat).sum() / (n * (n - 1))).item()


def inputs(arch: ArchSpec, seed: int = 1) -> torch.Tensor:
    return torch.randn(32, arch.in_dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "arch, expected",
    [
        (ArchSpec("mlp", (64, 10)), []),
        (ArchSpec("mlp", (5, 7, 3)), [7]),
        (ArchSpec("mlp", (13, 16, 8, 3)), [16, 8]),
        (ArchSpec("cnn", (4, 3)), [4]),
        (ArchSpec("cnn", (3, 4, 5, 2)), [3, 4, 5]),
        (ArchSpec("inr", (2, 32, 32, 1)), [32, 32]),
    ],
    ids=lambda v: v.slug if isinstance(v, ArchSpec) else "",
)
def test_num_hidden(arch, expected):
    assert num_hidden(arch) == expected


@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
def test_identity_permutation_is_identity(arch):
    flat = init_flat(arch, 1)[0]
    assert torch.equal(permute(arch, flat, [torch.arange(h) for h in num_hidden(arch)]), flat)


@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
def test_random_permutation_keeps_the_function(arch):
    g = torch.Generator().manual_seed(2)
    flat, x = init_flat(arch, 4), inputs(arch)
    permuted = random_permutation(arch, flat, g)
    assert permuted.shape == flat.shape
    assert not torch.equal(permuted, flat)  # it did move something
    for a, b in zip(permuted, flat):  # the same multiset of values per model
        assert torch.equal(a.sort().values, b.sort().values)
    torch.testing.assert_close(outputs(arch, permuted, x), outputs(arch, flat, x), atol=1e-5, rtol=1e-5)
    # and through an ordinary module, as users would run it
    torch.testing.assert_close(module_outputs(arch, permuted[0], x), module_outputs(arch, flat[0], x),
                               atol=1e-5, rtol=1e-5)


def test_random_permutation_batched_leading_dims():
    arch = ArchSpec("mlp", (5, 6, 7, 3), "tanh")
    flat, x = init_flat(arch, 6).reshape(2, 3, -1), inputs(arch)
    permuted = random_permutation(arch, flat, torch.Generator().manual_seed(0))
    assert permuted.shape == flat.shape
    torch.testing.assert_close(outputs(arch, permuted.flatten(0, 1), x), outputs(arch, flat.flatten(0, 1), x),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ALIGNABLE, ids=lambda a: a.slug)
def test_match_undoes_a_random_permutation_exactly(arch):
    g = torch.Generator().manual_seed(3)
    for flat in init_flat(arch, 3, seed=3):
        permuted = random_permutation(arch, flat, g)
        assert not torch.equal(permuted, flat)
        assert torch.equal(permute(arch, permuted, match(arch, permuted, flat)), flat)
        # a model matched to itself needs no permutation
        assert all(torch.equal(p, torch.arange(len(p))) for p in match(arch, flat, flat))


@pytest.mark.parametrize("arch", [ArchSpec("mlp", (5, 6, 7, 8, 3), "tanh"), ArchSpec("inr", (2, 8, 8, 1))],
                         ids=lambda a: a.slug)
def test_match_undoes_permutations_of_narrow_deep_nets(arch):
    """A permuted copy is the global optimum of weight matching (objective = |ref|^2), so an aligner
    should find it; match's forward-sweep start makes it do so."""
    for seed in range(30):
        flat = init_flat(arch, 1, seed=seed)[0]
        permuted = random_permutation(arch, flat, torch.Generator().manual_seed(seed))
        assert torch.equal(permute(arch, permuted, match(arch, permuted, flat)), flat), f"seed {seed}"


@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
def test_canonicalize_keeps_functions_and_pulls_population_together(arch):
    g = torch.Generator().manual_seed(4)
    base, x = init_flat(arch, 1, seed=4), inputs(arch)
    population = random_permutation(arch, base + 0.2 * base.abs().mean() * torch.randn(8, base.shape[1], generator=g), g)
    aligned, reference = canonicalize(arch, population)
    assert aligned.shape == population.shape and reference.shape == (population.shape[1],)
    torch.testing.assert_close(outputs(arch, aligned, x), outputs(arch, population, x), atol=1e-5, rtol=1e-5)
    assert mean_pairwise_distance(aligned) < 0.8 * mean_pairwise_distance(population)


@pytest.mark.parametrize("arch", ALIGNABLE[2:], ids=lambda a: a.slug)
def test_canonicalize_with_a_reference(arch):
    population = init_flat(arch, 5, seed=5)
    reference = init_flat(arch, 1, seed=6)[0]
    kept = reference.clone()
    aligned, ref = canonicalize(arch, population, reference)
    assert torch.equal(ref, kept) and torch.equal(reference, kept)  # returned as given, not modified
    # aligning to the same reference again is a fixed point: weight matching already converged
    again, _ = canonicalize(arch, aligned, reference)
    assert torch.equal(again, aligned)
    # permuted copies of the reference all align back onto it
    copies = random_permutation(arch, reference.expand(4, -1), torch.Generator().manual_seed(7))
    back, _ = canonicalize(arch, copies, reference)
    assert torch.equal(back, reference.expand(4, -1))


def test_no_hidden_layer_is_left_alone():
    arch = ArchSpec("mlp", (6, 3))
    flat = init_flat(arch, 3)
    assert torch.equal(random_permutation(arch, flat), flat)
    aligned, _ = canonicalize(arch, flat)
    assert torch.equal(aligned, flat)


# -- zoo_weights on the debug zoo --------------------------------------------------------------

def _tasks(records):
    return [get_task(r["task"]) for r in records]


def test_zoo_weights_separates_held_out_models(debug_zoo):
    held_tasks = debug_zoo.held_out
    assert held_tasks  # the debug zoo holds out one task
    groups = zoo_weights(debug_zoo, canonical=False)
    assert {g.arch.slug for g in groups} == set(debug_zoo.archs)
    n_held = 0
    for g in groups:
        numel = g.arch.layout().numel
        assert g.train.shape == (len(g.train_records), numel)
        assert g.held_out.shape == (len(g.held_out_records), numel)
        assert g.reference is None
        assert all(not r["held_out"] and r["task"] not in held_tasks for r in g.train_records)
        assert all(r["held_out"] and r["task"] in held_tasks for r in g.held_out_records)
        ids = [r["id"] for r in g.train_records + g.held_out_records]
        assert sorted(ids) == sorted(r["id"] for r in debug_zoo.records if r["arch"] == g.arch.slug)
        n_held += len(g.held_out_records)
        # rows follow their records
        for row, rec in zip(g.train, g.train_records[:2]):
            assert torch.equal(row, g.arch.layout().flatten(debug_zoo.state_dict(rec["id"])).float())
    assert n_held == sum(r["held_out"] for r in debug_zoo.records) > 0


def test_zoo_weights_canonical_keeps_every_models_function(debug_zoo):
    raw = zoo_weights(debug_zoo, canonical=False)
    canon = zoo_weights(debug_zoo, canonical=True)
    for r, c in zip(raw, canon):
        assert r.arch == c.arch
        assert [x["id"] for x in r.train_records] == [x["id"] for x in c.train_records]
        assert [x["id"] for x in r.held_out_records] == [x["id"] for x in c.held_out_records]
        assert c.reference is not None and c.reference.shape == (c.arch.layout().numel,)
        # the reference is found on training models only; held-out models are aligned to it
        expected_train, expected_ref = canonicalize(r.arch, r.train)
        assert torch.equal(c.reference, expected_ref) and torch.equal(c.train, expected_train)
        if len(r.held_out):
            assert torch.equal(c.held_out, canonicalize(r.arch, r.held_out, expected_ref)[0])
        for split in ("train", "held_out"):
            records = getattr(r, f"{split}_records")
            if not records:
                continue
            before = evaluate_flat(r.arch, getattr(r, split), _tasks(records))["acc"]
            after = evaluate_flat(c.arch, getattr(c, split), _tasks(records))["acc"]
            assert torch.equal(after, before)
            torch.testing.assert_close(before, torch.tensor([x["test_acc"] for x in records], dtype=torch.float64), atol=1e-6, rtol=0)


def test_canonicalize_trained_permuted_zoo(debug_zoo):
    """Trained weights: a randomly permuted copy of the zoo keeps its accuracies through
    canonicalisation and ends up closer together than the permuted copy."""
    (group,) = zoo_weights(debug_zoo, canonical=False, archs=["mlp-64-16-3-relu"])
    permuted = random_permutation(group.arch, group.train, torch.Generator().manual_seed(8))
    aligned, _ = canonicalize(group.arch, permuted)
    tasks = _tasks(group.train_records)
    acc = evaluate_flat(group.arch, group.train, tasks)["acc"]
    assert torch.equal(evaluate_flat(group.arch, permuted, tasks)["acc"], acc)
    assert torch.equal(evaluate_flat(group.arch, aligned, tasks)["acc"], acc)
    assert mean_pairwise_distance(aligned) < 0.8 * mean_pairwise_distance(permuted)


def test_zoo_weights_unknown_arch_names_it(debug_zoo):
    with pytest.raises(ZooError, match="mlp-9-9-9-relu"):
        zoo_weights(debug_zoo, archs=["mlp-9-9-9-relu"])
