"""The task-conditioned mean (weightgen/space/task_mean.py) and the VQ tokenizer that codes residuals
around it: the ridge map for unseen tasks, shrunk offsets for seen ones, exact save/load, and a
decode that adds back exactly the mean of the task it is given."""

from __future__ import annotations

import pytest
import torch

from weightgen.encoders.vqvae import WeightVQVAE
from weightgen.errors import ArchError
from weightgen.space.dataset import zoo_weights
from weightgen.space.task_mean import TaskMean, fit_offsets, fit_ridge
from weightgen.specs import ArchSpec
from weightgen.tasks import TASK_CODE_DIM, get_task, task_code


def _tasks(n_tasks: int, per_task: int, dim: int, offset_scale: float, noise: float, seed: int = 0):
    """Vectors x = A code + offset(task) + noise, for n_tasks random binary codes of 6 bits."""
    g = torch.Generator().manual_seed(seed)
    task_codes = (torch.rand(n_tasks, 6, generator=g) > 0.5).float()
    a = torch.randn(6, dim, generator=g)
    offsets = offset_scale * torch.randn(n_tasks, dim, generator=g)
    idx = torch.arange(n_tasks).repeat_interleave(per_task)
    x = task_codes[idx] @ a + offsets[idx] + noise * torch.randn(len(idx), dim, generator=g)
    return task_codes, idx, x, a


def test_ridge_recovers_a_linear_map_and_predicts_with_it():
    codes, idx, x, a = _tasks(40, 5, 8, offset_scale=0.0, noise=0.01)
    x_mean, code_mean, weight = fit_ridge(x, codes[idx], ridge=1e-6)
    assert x_mean.dtype == weight.dtype == torch.float64
    torch.testing.assert_close(weight.float(), a, atol=0.01, rtol=0)
    pred = x_mean + (codes[idx].double() - code_mean) @ weight
    assert (pred - x.double()).abs().max() < 0.05


def test_offsets_keep_consistent_tasks_and_shrink_pure_noise_to_zero():
    codes, idx, x, _ = _tasks(10, 50, 16, offset_scale=1.0, noise=0.05)
    tasks, offset = fit_offsets(x - x.mean(0), codes[idx])
    assert offset.shape == (len(tasks), 16)
    # many models, little spread: each task keeps (nearly) its own mean residual
    for t, o in zip(tasks, offset):
        own = (x - x.mean(0))[(codes[idx] == t).all(1)].mean(0).double()
        assert (o - own).abs().max() < 0.01
    # no task structure at all: every offset shrinks to zero
    noise = torch.randn(500, 16, generator=torch.Generator().manual_seed(1))
    assert fit_offsets(noise, codes[idx])[1].abs().max() < 0.05


def test_task_mean_gives_seen_tasks_their_offset_and_unseen_ones_the_ridge_mean():
    codes, idx, x, _ = _tasks(12, 30, 10, offset_scale=1.0, noise=0.05)
    seen, unseen = codes[:8], codes[8:]
    keep = idx < 8
    tm = TaskMean(n_archs=2, code_dim=6, dim=12, max_seen_tasks=8)
    tm.fit(1, x[keep], codes[idx[keep]], ridge=1.0)
    x_mean, code_mean, weight = fit_ridge(x[keep], codes[idx[keep]], 1.0)
    ridge_pred = (x_mean + (unseen.double() - code_mean) @ weight).float()
    torch.testing.assert_close(tm(1, unseen, 10), ridge_pred, atol=1e-5, rtol=0)
    for k in range(8):  # a seen task's mean is (nearly) its models' mean
        assert (tm(1, seen[k : k + 1], 10)[0] - x[idx == k].mean(0)).abs().max() < 0.05
    assert tm(1, None, 10).shape == (1, 10)
    torch.testing.assert_close(tm(1, None, 10)[0], x[keep].mean(0), atol=1e-5, rtol=0)
    assert tm(0, seen, 10).abs().max() == 0  # the other arch is untouched


def test_task_mean_refuses_more_tasks_or_wider_vectors_than_it_was_built_for():
    codes, idx, x, _ = _tasks(5, 4, 6, offset_scale=1.0, noise=0.1)
    with pytest.raises(ValueError, match="5 seen tasks but the task mean was built for at most 4"):
        TaskMean(1, 6, 6, max_seen_tasks=4).fit(0, x, codes[idx])
    with pytest.raises(ValueError, match="vectors of 6 values"):
        TaskMean(1, 6, 5, max_seen_tasks=5).fit(0, x, codes[idx])


@pytest.fixture(scope="module")
def tokenizer(debug_zoo):
    """A tiny untrained VQ tokenizer with a task mean fitted on the debug zoo's MLPs and CNNs."""
    data = zoo_weights(debug_zoo)
    torch.manual_seed(0)
    model = WeightVQVAE([d.arch.to_dict() for d in data], hidden=32, embed_dim=16, task_code_dim=TASK_CODE_DIM,
                        max_seen_tasks=16).eval()
    codes = {}
    for d in data:
        codes[d.arch] = torch.stack([task_code(get_task(r["task"])) for r in d.train_records])
        model.fit_task_mean(d.arch, d.train, codes[d.arch])
    model.token_table({d.arch: model.residual(d.arch, d.train, codes[d.arch]) for d in data})
    return model, data, codes


def test_decode_adds_back_exactly_the_mean_of_the_task_it_is_given(tokenizer):
    model, data, codes = tokenizer
    d = data[0]
    ids = model.encode(d.train, d.arch, codes[d.arch])
    a, b = codes[d.arch][:1], 1 - codes[d.arch][:1]  # two different tasks' codes
    index = model.stats.index[d.arch.slug]
    n = d.arch.layout().numel
    diff = model.decode(ids, d.arch, a) - model.decode(ids, d.arch, b)
    expected = model.task_mean(index, a, n) - model.task_mean(index, b, n)
    torch.testing.assert_close(diff, expected.expand_as(diff), atol=1e-5, rtol=1e-5)
    assert expected.abs().max() > 0  # the task actually moves the decoded weights


def test_residual_of_the_training_models_is_centred(tokenizer):
    model, data, codes = tokenizer
    for d in data:
        resid = model.residual(d.arch, d.train, codes[d.arch])
        # ridge + offsets leave residuals with (numerically) zero mean over the training models
        assert resid.mean(0).abs().max() < 1e-3 * d.train.abs().max()
        assert resid.pow(2).mean() < (d.train - d.train.mean(0)).pow(2).mean()


def test_task_mean_survives_save_and_load(tokenizer, tmp_path):
    model, data, codes = tokenizer
    model.save_pretrained(tmp_path)
    loaded = WeightVQVAE.from_pretrained(tmp_path).eval()
    for name, buf in model.task_mean.named_buffers():
        torch.testing.assert_close(getattr(loaded.task_mean, name), buf, rtol=0, atol=0, equal_nan=True)
    d = data[-1]
    ids = model.encode(d.train, d.arch, codes[d.arch])
    assert torch.equal(loaded.encode(d.train, d.arch, codes[d.arch]), ids)
    assert torch.equal(loaded.decode(ids, d.arch, codes[d.arch]), model.decode(ids, d.arch, codes[d.arch]))


def test_weights_of_the_wrong_width_raise_arch_error(tokenizer):
    model, data, codes = tokenizer
    d = data[0]
    with pytest.raises(ArchError, match=f"has {d.arch.layout().numel} weights, got vectors of 7"):
        model.encode(torch.zeros(2, 7), d.arch, codes[d.arch][:2])
    with pytest.raises(ArchError):
        model.encode(d.train[:2], ArchSpec("mlp", (64, 7, 3)), codes[d.arch][:2])
