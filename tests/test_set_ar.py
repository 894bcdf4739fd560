"""The autoregressive generator over neuron sets (weightgen/generators/neuron_ar.py, set_ar.py): a
canonical order that permutations cannot change, tokens that keep the network, cached sampling that
is exactly the model training scores, and any width end to end through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaModel

from weightgen.generators.neuron_ar import NeuronAR, teacher_forced_logits, teacher_forced_loss
from weightgen.generators.set_ar import SetARPipeline
from weightgen.space.neurons import neuron_layout, output_classes
from weightgen.specs import ArchSpec
from weightgen.tasks import TASK_CODE_DIM, get_task, task_code

ARCH = ArchSpec("mlp", (64, 12, 6, 3))


def _nets(arch: ArchSpec, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return arch.layout().flatten(arch.init_params(n, g)) * 3


def _heads(archs=(ARCH, ArchSpec("mlp", (64, 10, 4))), probe: int = 0) -> NeuronAR:
    """Tokens (stats, codebook, bins) fitted on random networks of `archs`; `probe` probe inputs."""
    heads = NeuronAR(hidden_size=32, n_bins=16, codebook_size=8, task_code_dim=TASK_CODE_DIM, probe_size=probe)
    if probe:
        g = torch.Generator().manual_seed(2)
        heads.set_probe(torch.rand(probe, 64, generator=g) * 16, torch.arange(probe) % 10)
    sets = [(neuron_layout(a), *neuron_layout(a).split(_nets(a, 40, seed=i))) for i, a in enumerate(archs)]
    heads.stats.fit(sets)
    heads.fit_tokens([(lay, *heads.stats.standardize(lay, n, e)) for lay, n, e in sets])
    return heads


def _function(arch: ArchSpec, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return arch.forward_batched(arch.layout().unflatten(flat), x.expand(len(flat), -1, -1))


def test_canonical_order_ignores_neuron_permutations_and_keeps_the_function():
    heads, layout = _heads(), neuron_layout(ARCH)
    nodes, edges = heads.stats.standardize(layout, *layout.split(_nets(ARCH, 5, seed=7)))
    g = torch.Generator().manual_seed(1)
    perms = [torch.randperm(h, generator=g) for h in ARCH.sizes[1:-1]]
    pn, pe = layout.permute(nodes, edges, perms)
    a, b = heads.tokenize(layout, nodes, edges), heads.tokenize(layout, pn, pe)
    assert not torch.equal(pn, nodes)
    for field in ("code", "residual", "bias", "weight"):
        x, y = getattr(a, field), getattr(b, field)
        assert all(torch.equal(u, v) for u, v in zip(x, y)) if isinstance(x, list) else torch.equal(x, y), field
    assert (a.code.diff(dim=1) >= 0).all()  # first layer: codes in order
    cn, ce = heads.canonical(layout, nodes, edges)
    x = torch.randn(1, 16, 64)
    before = layout.join(*heads.stats.destandardize(layout, nodes, edges))
    after = layout.join(*heads.stats.destandardize(layout, cn, ce))
    assert not torch.equal(before, after)
    torch.testing.assert_close(_function(ARCH, after, x), _function(ARCH, before, x), rtol=1e-4, atol=1e-4)


def test_tokens_keep_each_network_to_within_its_quantisation():
    heads, layout = _heads(), neuron_layout(ARCH)
    nodes, edges = heads.canonical(layout, *heads.stats.standardize(layout, *layout.split(_nets(ARCH, 6, seed=3))))
    rn, re = heads.to_network(layout, *heads.values(layout, heads.tokenize(layout, nodes, edges)))
    mask = layout.feature_mask
    for got, want in [(rn[:, mask], nodes[:, mask]), *zip(re, edges)]:
        rms = ((got - want) ** 2).mean().sqrt() / want.std()
        assert rms < 0.3, rms  # 16 bins and 8 templates on random networks: coarse, but the same network
    assert torch.equal(rn[:, ~mask], torch.zeros_like(rn[:, ~mask]))


def _pipeline(heads: NeuronAR) -> SetARPipeline:
    lm = LlamaModel(LlamaConfig(vocab_size=1, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1,
                                bos_token_id=None, eos_token_id=None, pad_token_id=None))
    for p in heads.parameters():  # random heads: every token's logits depend on what came before
        torch.nn.init.normal_(p, std=0.3)
    return SetARPipeline(lm=lm.eval(), heads=heads.eval())


@pytest.mark.parametrize(("arch", "probe"), [(ARCH, 10), (ARCH, 0), (ArchSpec("mlp", (64, 9, 3)), 10)],
                         ids=["deep-probe", "deep", "one-layer-probe"])
def test_cached_sampling_is_what_training_scores(arch, probe):
    """Greedy sampling with the LM's cache, one neuron per step, must pick the argmax of the same
    model's teacher-forced logits on its own samples: the loop and the training pass agree."""
    pipe, layout = _pipeline(_heads(probe=probe)), neuron_layout(arch)
    task = get_task("digits-subset-3-5-8")
    emb = pipe._text(f"{task.description} with an {arch.describe()}")
    classes, code = output_classes(arch, task)[None], task_code(task)[None]
    with torch.no_grad():
        tok = pipe.sample_tokens(layout, 3, emb, classes, code, temperature=0.0, guidance=1.0, g=torch.Generator())
        logits = teacher_forced_logits(pipe.lm, pipe.heads, layout, tok, emb.tokens.expand(3, -1, -1),
                                       emb.mask.expand(3, -1), code.expand(3, -1), classes.expand(3, -1))
    code_logits, residual, bias, weight = logits
    previous = torch.cat([torch.zeros(3, 1, dtype=torch.long), tok.code[:, :-1]], 1)
    allowed = torch.arange(code_logits.shape[-1]) >= previous[..., None]
    assert torch.equal(code_logits.masked_fill(~allowed, float("-inf")).argmax(-1), tok.code)
    assert torch.equal(residual.argmax(-1), tok.residual)
    assert all(torch.equal(b.argmax(-1), t) for b, t in zip(bias, tok.bias))
    assert all(torch.equal(w.argmax(-1), t) for w, t in zip(weight, tok.weight))
    assert len(tok.weight) == len(arch.sizes) - 2 and tok.weight[-1].shape == (3, 3, arch.sizes[-2])


def test_training_steps_lower_the_loss_of_a_batch():
    heads, layout = _heads(probe=10), neuron_layout(ARCH)
    tok = heads.tokenize(layout, *heads.stats.standardize(layout, *layout.split(_nets(ARCH, 8, seed=5))))
    pipe = SetARPipeline(lm=_pipeline(heads).lm.train(), heads=heads.train())
    emb = pipe._text("classify digits 3, 5 and 8 with an MLP 64-12-6-3")
    args = (layout, tok, emb.tokens.expand(8, -1, -1), emb.mask.expand(8, -1), None,
            torch.tensor([[3, 5, 8]]).expand(8, -1))
    params = [*pipe.lm.parameters(), *pipe.heads.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    first = teacher_forced_loss(pipe.lm, pipe.heads, *args)
    for _ in range(25):
        loss = teacher_forced_loss(pipe.lm, pipe.heads, *args)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(first) and loss.item() < 0.8 * first.item()


def test_cli_samples_an_unseen_width_with_the_set_ar(debug_set_ar, run_cli, tmp_path):
    pipe = SetARPipeline.from_pretrained(debug_set_ar)
    assert ArchSpec.parse("MLP 64-24-12-3") not in pipe.archs
    out = tmp_path / "samples"
    code, stdout, err = run_cli("sample", "classify digits 3, 5 and 8 with an MLP 64-24-12-3", "--generator",
                                debug_set_ar, "-n", "2", "--seed", "1", "--guidance", "2", "--out", out, "--json",
                                timeout=300)
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["arch"] == "MLP 64-24-12-3, ReLU" and result["num_finite"] == 2
    assert any("is new" in n for n in result["notes"])
    same = pipe("classify digits 3, 5 and 8", arch="MLP 64-20-3", num_samples=2, generator=4)
    again = pipe("classify digits 3, 5 and 8", arch="MLP 64-20-3", num_samples=2, generator=4)
    assert torch.equal(same.flat, again.flat) and same.flat.shape == (2, ArchSpec.parse("MLP 64-20-3").layout().numel)
    code, _, err = run_cli("sample", "classify digits 3, 5 and 8 with a CNN 8-3", "--generator", debug_set_ar,
                           "--out", tmp_path / "x", timeout=300)
    assert code == 2 and "only MLPs" in err and "Traceback" not in err, err
    code, _, err = run_cli("sample", "classify digits 3, 5 and 8", "--generator", debug_set_ar, "--steps", "3",
                           "--out", tmp_path / "y", timeout=300)
    assert code == 2 and "one step per token" in err and "Traceback" not in err, err


def test_probe_activations_are_what_the_network_itself_computes():
    heads, layout = _heads(probe=10), neuron_layout(ARCH)
    tok = heads.tokenize(layout, *heads.stats.standardize(layout, *layout.split(_nets(ARCH, 4, seed=9))))
    rows, bias, weight = heads.values(layout, tok)
    content, acts = heads.first_content(rows)
    _, acts = heads.deep_content(bias[0], weight[0], content, acts, heads.layer_roles(layout, 1))
    sd = ARCH.layout().unflatten(layout.join(*heads.stats.destandardize(layout, *heads.to_network(layout, rows, bias,
                                                                                                   weight))))
    x = heads.probe_x.expand(4, -1, -1)
    hidden = (x @ sd["layers.0.weight"].transpose(1, 2) + sd["layers.0.bias"][:, None]).clamp_min(0)
    hidden = (hidden @ sd["layers.1.weight"].transpose(1, 2) + sd["layers.1.bias"][:, None]).clamp_min(0)
    torch.testing.assert_close(acts.transpose(1, 2), hidden, rtol=1e-4, atol=1e-4)
