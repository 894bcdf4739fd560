"""Issue 14's functional novelty: the probe set, copy vs fresh-run scores, the closed-form mean
baselines, and a fine-tuning stop condition that never reads the test split."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch

from weightgen.baselines import ConditionalMean, finetune_steps, train_from_scratch, zoo_recipe
from weightgen.metrics import probe_predictions
from weightgen.novelty import agreement, align_zoo, functional_novelty
from weightgen.probe import PROBE_MIN, _probe, probe_set
from weightgen.space.symmetry import random_permutation
from weightgen.tasks import TaskSpec, get_task

pytestmark = pytest.mark.usefixtures("torch_one_thread")

MLP3 = "mlp-64-16-3-relu"  # debug zoo: tasks 0-7-8, 1-7-9, 2-3-5 seen, 3-5-8 held out; 2 seeds each
SEEN, HELD = get_task("digits-subset-0-7-8"), get_task("digits-subset-3-5-8")
DIGEST = ("import hashlib; from weightgen.probe import probe_set; from weightgen.tasks import get_task; "
          "x, y = probe_set(get_task('{}')); print(hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest())")


def _digest(task: TaskSpec) -> str:
    x, y = probe_set(task)
    return hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()


def test_the_probe_is_the_same_on_every_run():
    here = _digest(SEEN)
    _probe.cache_clear()
    assert _digest(SEEN) == here  # recomputed, not just cached
    # a fresh interpreter (another hash seed, nothing cached) builds the same bytes
    out = subprocess.run([sys.executable, "-c", DIGEST.format(SEEN.id)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == here


@pytest.mark.parametrize("tid", ["digits-subset-0-7", "digits-subset-3-5-8", "digits-rotate-30", "iris"])
def test_the_probe_holds_the_clean_test_split_and_perturbed_copies(tid):
    task = get_task(tid)
    x, y = probe_set(task)
    tx, ty = task.split("test")
    assert len(y) >= PROBE_MIN and len(y) % len(ty) == 0 and x.shape == (len(y), task.in_dim)
    assert torch.equal(x[: len(ty)], tx) and torch.equal(y, ty.repeat(len(y) // len(ty)))
    assert x.isfinite().all()
    copies = x[len(ty):].view(-1, *tx.shape)  # every perturbed round moves every example a little
    assert ((copies - tx).abs().amax(-1) > 0).all()
    assert (copies - tx).abs().mean() < 0.5
    assert probe_set(get_task("digits-image-3")) is None  # image fitting has no wrong answers


def test_a_copy_scores_iou_1_and_disagreement_0_and_a_fresh_run_does_not(debug_zoo):
    arch = debug_zoo.archs[MLP3]
    params, records = debug_zoo.load_arch(MLP3, include_held_out=True)
    flat = arch.layout().flatten(params)[[i for i, r in enumerate(records) if r["task"] == SEEN.id]]
    zoo = probe_predictions(arch, flat, SEEN)
    assert zoo["ok"].all()
    # a permuted copy computes the same function: the same predictions on every probe example
    copies = random_permutation(arch, flat, torch.Generator().manual_seed(1))
    f = functional_novelty(probe_predictions(arch, copies, SEEN), zoo)
    assert f["iou"].tolist() == [1.0] * len(flat) and f["disagreement"].tolist() == [0.0] * len(flat)
    assert f["nearest"].tolist() == list(range(len(flat)))
    # leave-one-out: no model is compared with itself
    loo = functional_novelty(zoo, zoo, leave_one_out=True)
    assert (loo["disagreement"] > 0).all() and (loo["iou"] < 1).all()
    fresh = train_from_scratch(arch, SEEN, zoo_recipe(debug_zoo), 2, torch.Generator().manual_seed(7))
    f = functional_novelty(probe_predictions(arch, fresh, SEEN), zoo)
    assert (f["disagreement"] > 0).all() and (f["iou"] < 1).all()
    # a model that does not run has no novelty
    broken = flat[:1].clone()
    broken[0, 0] = float("nan")
    f = functional_novelty(probe_predictions(arch, broken, SEEN), zoo)
    assert f["iou"].isnan().all() and f["disagreement"].isnan().all() and f["nearest"].tolist() == [-1]


def test_agreement_counts_equal_predictions():
    a = torch.tensor([[0, 1, 2, 2], [-1, -1, -1, -1]])
    b = torch.tensor([[0, 1, 2, 0], [1, 1, 1, 1]])
    assert agreement(a, b).tolist() == [[0.75, 0.25], [0.0, 0.0]]


def test_the_mean_baselines_have_the_right_shapes_and_are_finite(debug_zoo):
    arch = debug_zoo.archs[MLP3]
    params, records = debug_zoo.load_arch(MLP3)  # seen tasks only, as a generator sees them
    pool = align_zoo(arch, arch.layout().flatten(params))
    tasks = [r["task"] for r in records]
    fit = ConditionalMean.fit(pool.aligned, tasks)
    p = arch.layout().numel
    for task in (SEEN, HELD):
        mean, drawn = fit.mean(task), fit.sample(task, 5, torch.Generator().manual_seed(0))
        assert mean.shape == (1, p) and drawn.shape == (5, p)
        assert mean.isfinite().all() and drawn.isfinite().all()
        assert not torch.equal(drawn[0], drawn[1])
    assert fit.has_offset(SEEN) and not fit.has_offset(HELD)
    assert fit.std.shape == (p,) and (fit.std >= 0).all() and fit.std.max() > 0
    # without offsets every task gets the ridge map alone; a held-out task gets it either way
    ridge = ConditionalMean.fit(pool.aligned, tasks, offsets=False)
    assert not ridge.has_offset(SEEN) and torch.allclose(ridge.mean(HELD), fit.mean(HELD))


def test_the_finetuning_stop_condition_reads_val_not_test(debug_zoo, monkeypatch):
    arch = debug_zoo.archs[MLP3]
    g = torch.Generator().manual_seed(0)
    starts = arch.layout().flatten(arch.init_params(2, g))
    read: list[str] = []
    split = TaskSpec.split

    def spy(self, name):
        read.append(name)
        return split(self, name)

    monkeypatch.setattr(TaskSpec, "split", spy)
    res = finetune_steps(arch, SEEN, starts, zoo_recipe(debug_zoo), 0.9, g)
    assert "test" not in read and "val" in read
    assert res["flat"].shape == starts.shape and not torch.equal(res["flat"], starts)
