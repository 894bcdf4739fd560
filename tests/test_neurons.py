"""Neuron sets (weightgen/space/neurons.py) and the SetDiT denoiser: exact round trips, per-role
statistics that serve any width, and permutation equivariance."""

from __future__ import annotations

import pytest
import torch

from weightgen.errors import ArchError
from weightgen.generators.set_diffusion import layer_masks, packed_mask
from weightgen.generators.set_dit import SetDiT
from weightgen.space.neurons import NeuronLayout, RoleStats, check_expressible, neuron_layout, output_classes
from weightgen.specs import ArchSpec
from weightgen.tasks import get_task

ARCHS = [ArchSpec("mlp", (64, 16, 3)), ArchSpec("mlp", (64, 24, 12, 5)), ArchSpec("mlp", (64, 8, 6, 4, 2))]


def _weights(arch: ArchSpec, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return arch.layout().flatten(arch.init_params(n, g)) * 3  # not the init's scale, so stats matter


def _random_perms(arch: ArchSpec, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(h, generator=g) for h in arch.sizes[1:-1]]


def _function(arch: ArchSpec, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return arch.forward_batched(arch.layout().unflatten(flat), x.expand(len(flat), -1, -1))


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.slug)
def test_split_join_is_exact_and_permuting_neurons_keeps_the_function(arch):
    layout = neuron_layout(arch)
    flat = _weights(arch, 3)
    nodes, edges = layout.split(flat)
    assert nodes.shape == (3, sum(arch.sizes[1:]), arch.sizes[0] + 1)
    assert [e.shape[1:] for e in edges] == [(b, a) for a, b in zip(arch.sizes[1:-1], arch.sizes[2:])]
    assert torch.equal(layout.join(nodes, edges), flat)
    assert torch.all(nodes[:, ~layout.feature_mask] == 0)  # padding is zero
    # a permutation of the hidden neurons: other weights, the same function
    pn, pe = layout.permute(nodes, edges, _random_perms(arch, 1))
    permuted = layout.join(pn, pe)
    assert not torch.equal(permuted, flat)
    x = torch.randn(1, 20, 64)
    torch.testing.assert_close(_function(arch, permuted, x), _function(arch, flat, x), rtol=1e-5, atol=1e-5)


def test_role_stats_fit_on_one_width_serve_others_exactly():
    fit_arch = ArchSpec("mlp", (64, 32, 3))
    stats = RoleStats()
    layout = neuron_layout(fit_arch)
    stats.fit([(layout, *layout.split(_weights(fit_arch, 50)))])
    nodes, edges = stats.standardize(layout, *layout.split(_weights(fit_arch, 50, seed=1)))
    assert nodes[:, layout.feature_mask].std().item() == pytest.approx(1.0, abs=0.15)
    # three widths the statistics were not fitted on: exact round trip, unit-scale first-layer weights
    for arch in (ArchSpec("mlp", (64, 20, 3)), ArchSpec("mlp", (64, 48, 3)), ArchSpec("mlp", (64, 48, 24, 6))):
        other = neuron_layout(arch)
        flat = _weights(arch, 8)
        sn, se = stats.standardize(other, *other.split(flat))
        assert sn[:, other.slices[0], :-1].std().item() == pytest.approx(1.0, abs=0.2)  # fan-in scaling
        torch.testing.assert_close(other.join(*stats.destandardize(other, sn, se)), flat, rtol=1e-5, atol=1e-6)


def _model(edge_channels: int = 0, probe_size: int = 0, self_cond: bool = False) -> SetDiT:
    torch.manual_seed(0)
    model = SetDiT(in_dim=64, n_classes=10, num_layers=2, num_attention_heads=2, attention_head_dim=8, text_dim=12,
                   task_code_dim=5, edge_channels=edge_channels, probe_size=probe_size, self_cond=self_cond).eval()
    if probe_size:
        model.set_probe(torch.randn(probe_size, 64), torch.arange(probe_size) % 10)
    for p in model.parameters():  # zero-initialised mixes would hide the edge messages from the test
        if torch.all(p == 0):
            torch.nn.init.normal_(p, std=0.1)
    return model


def _forward(model, layout, nodes, edges, classes, prev=None):
    b = nodes.shape[0]
    g = torch.Generator().manual_seed(5)
    text, mask = torch.randn(b, 4, 12, generator=g), torch.ones(b, 4, dtype=torch.bool)
    return model(layout, nodes, edges, torch.full((b,), 300), text, mask, classes,
                 task_code=torch.randn(b, 5, generator=g), prev=prev)


@pytest.mark.parametrize("edge_channels,probe_size,self_cond", [(0, 0, False), (4, 0, False), (4, 20, False),
                                                                 (4, 20, True)],
                         ids=["messages", "edge-stream", "edge-stream+probe", "edge-stream+probe+self-cond"])
@pytest.mark.parametrize("arch", ARCHS[1:], ids=lambda a: a.slug)
def test_set_dit_is_permutation_equivariant_and_decodes_to_the_same_function(arch, edge_channels, probe_size,
                                                                             self_cond):
    model, layout = _model(edge_channels, probe_size, self_cond), neuron_layout(arch)
    nodes, edges = layout.split(torch.randn(2, arch.layout().numel))
    nodes = nodes * layout.feature_mask
    classes = torch.arange(arch.out_dim).expand(2, -1)
    perms = _random_perms(arch, 3)
    prev = p_prev = None
    if self_cond:  # the previous clean estimate is permuted with the rest
        prev = layout.split(torch.randn(2, arch.layout().numel))
        prev = (prev[0] * layout.feature_mask, prev[1])
        p_prev = layout.permute(*prev, perms)
    with torch.no_grad():
        out_nodes, out_edges = _forward(model, layout, nodes, edges, classes, prev)
        p_nodes, p_edges = _forward(model, layout, *layout.permute(nodes, edges, perms), classes, p_prev)
        if self_cond:  # and the estimate matters
            other, _ = _forward(model, layout, nodes, edges, classes)
            assert not torch.allclose(other, out_nodes)
    want_nodes, want_edges = layout.permute(out_nodes, out_edges, perms)
    torch.testing.assert_close(p_nodes, want_nodes, rtol=1e-4, atol=1e-5)
    for got, want in zip(p_edges, want_edges):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # the outputs, read as networks, compute the same function
    x = torch.randn(1, 10, 64)
    torch.testing.assert_close(_function(arch, layout.join(p_nodes, p_edges), x),
                               _function(arch, layout.join(out_nodes, out_edges), x), rtol=1e-4, atol=1e-4)
    # and the edge messages matter: changing one hidden-to-hidden weight changes the outputs
    edges2 = [e.clone() for e in edges]
    edges2[0][:, 0, 0] += 1.0
    with torch.no_grad():
        moved, _ = _forward(model, layout, nodes, edges2, classes, prev)
    assert not torch.allclose(moved, out_nodes)
    if edge_channels:  # and an edge's own state reaches its output beside the pair head's
        model.edge_feat_out[0].weight.data.zero_()
        with torch.no_grad():
            _, without = _forward(model, layout, nodes, edges, classes, prev)
        assert not torch.allclose(without[0], out_edges[0])


def test_set_dit_serves_any_width_and_output_classes_matter():
    model = _model()
    for arch in (ArchSpec("mlp", (64, 20, 3)), ArchSpec("mlp", (64, 48, 3)), ArchSpec("mlp", (64, 48, 24, 3))):
        layout = neuron_layout(arch)
        nodes, edges = layout.split(torch.randn(1, arch.layout().numel))
        with torch.no_grad():
            a, _ = _forward(model, layout, nodes, edges, torch.tensor([[3, 5, 8]]))
            b, _ = _forward(model, layout, nodes, edges, torch.tensor([[1, 2, 7]]))
        assert a.shape == nodes.shape and a.isfinite().all()
        assert not torch.allclose(a, b)  # which digits the outputs score is conditioning


def test_what_cannot_be_expressed_is_refused_in_one_sentence():
    with pytest.raises(ArchError, match="only MLPs"):
        check_expressible(ArchSpec("cnn", (8, 10)))
    with pytest.raises(ArchError, match="no hidden layer"):
        NeuronLayout(ArchSpec("mlp", (64, 10)))
    with pytest.raises(ArchError, match="reads 13 inputs"):
        check_expressible(ArchSpec("mlp", (13, 16, 3)), in_dim=64)
    assert output_classes(ArchSpec("mlp", (64, 8, 3)), get_task("digits-subset-3-5-8")).tolist() == [3, 5, 8]
    assert output_classes(ArchSpec("mlp", (64, 8, 10)), get_task("digits-invert")).tolist() == list(range(10))


def test_a_staged_model_reads_which_layers_are_given_and_stays_equivariant():
    torch.manual_seed(0)
    model = SetDiT(in_dim=64, num_layers=2, num_attention_heads=2, attention_head_dim=8, text_dim=12,
                   edge_channels=4, staged=True).eval()
    for p in model.parameters():  # zero-initialised (the "given" mark too) until trained
        if torch.all(p == 0):
            torch.nn.init.normal_(p, std=0.1)
    arch = ARCHS[1]
    layout = neuron_layout(arch)
    nodes, edges = layout.split(torch.randn(2, arch.layout().numel))
    nodes, classes = nodes * layout.feature_mask, torch.arange(arch.out_dim).expand(2, -1)
    text, mask = torch.randn(2, 4, 12), torch.ones(2, 4, dtype=torch.bool)
    clean = torch.ones(2, dtype=torch.long)  # the first hidden layer is given clean

    def run(n, e, given=None):
        with torch.no_grad():
            return model(layout, n, e, torch.full((2,), 600), text, mask, classes, given=given)

    joint, given = run(nodes, edges), run(nodes, edges, clean)
    assert not torch.allclose(joint[1][0], given[1][0])  # "first layer clean" changes what the rest is denoised to
    perms = _random_perms(arch, 4)
    p_nodes, p_edges = run(*layout.permute(nodes, edges, perms), clean)
    want_nodes, want_edges = layout.permute(given[0], given[1], perms)
    torch.testing.assert_close(p_nodes, want_nodes, rtol=1e-4, atol=1e-5)
    for got, want in zip(p_edges, want_edges):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # the layers' slots partition the packed vector's real slots: layer 1 = its rows and biases, layer 2
    # = its biases and the weights into it, ...
    layers = torch.stack(layer_masks(layout))
    assert torch.equal(layers.sum(0), packed_mask(layout).long())
    sizes = arch.sizes
    assert layers.sum(1).tolist() == [sizes[1] * (sizes[0] + 1)] + [n * (m + 1) for m, n in zip(sizes[1:-1], sizes[2:])]


def test_probe_features_are_each_neurons_class_means_on_the_real_network():
    model, arch = _model(probe_size=30), ArchSpec("mlp", (64, 12, 8, 3))
    model.stats.mean.uniform_(-0.1, 0.1)  # the features must undo the standardisation
    model.stats.std.uniform_(0.5, 2.0)
    layout, flat = neuron_layout(arch), torch.randn(2, arch.layout().numel) * 0.2
    nodes, edges = model.stats.standardize(layout, *layout.split(flat))
    feats = model.probe_features(layout, nodes, edges)
    sd, x, want = arch.layout().unflatten(flat[1:]), model.probe_x, []
    for i in range(3):
        x = x @ sd[f"layers.{i}.weight"][0].T + sd[f"layers.{i}.bias"][0]
        want.append(torch.stack([x[model.probe_y == c].mean(0) for c in range(10)], dim=1))  # (n_l, 10)
        x = x.clamp_min(0)
    torch.testing.assert_close(feats[1], torch.asinh(torch.cat(want)), rtol=1e-4, atol=1e-4)
