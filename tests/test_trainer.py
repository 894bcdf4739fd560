"""Batched zoo training: K stacked networks train exactly like K separate nn.Module training loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from weightgen.errors import ConfigError
from weightgen.evaluate import evaluate_module
from weightgen.specs import ArchSpec
from weightgen.tasks import SPLITS, get_task
from weightgen.zoo.trainer import Recipe, epoch_order, train_batched

SEED = 1234


def reference_training(arch, tasks, init, recipe, seed):
    """The plain loop: one nn.Module and one torch optimizer per network, one example order per epoch.

    The orders are drawn exactly as train_batched draws them: one `epoch_order` call per epoch over all K
    networks (sizes = each task's training-set size, length = the largest) from one generator."""
    data = [t.split("train") for t in tasks]
    sizes = torch.tensor([len(x) for x, _ in data])
    length = int(sizes.max())
    g = torch.Generator().manual_seed(seed)
    orders = [epoch_order(sizes, length, g) for _ in range(recipe.epochs)]  # each (K, length)
    steps = math.ceil(length / recipe.batch_size)
    modules = []
    for i, (task, (x, y)) in enumerate(zip(tasks, data)):
        module = arch.build()
        module.load_state_dict({n: p[i] for n, p in init.items()})
        if recipe.optimizer == "sgd":
            opt = torch.optim.SGD(
                module.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
            )
        else:
            opt = torch.optim.Adam(module.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        for order in orders:
            for s in range(steps):
                idx = order[i, s * recipe.batch_size : (s + 1) * recipe.batch_size]
                out = module(x[idx])
                loss = F.mse_loss(out, y[idx]) if task.loss == "mse" else F.cross_entropy(out, y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        modules.append(module)
    return modules


def check_against_reference(arch, task_ids, recipe, init_seed=0):
    tasks = [get_task(t) for t in task_ids]
    init = arch.init_params(len(tasks), torch.Generator().manual_seed(init_seed))
    params, records = train_batched(arch, tasks, init, recipe, torch.Generator().manual_seed(SEED))
    modules = reference_training(arch, tasks, init, recipe, SEED)
    for i, module in enumerate(modules):
        for name, ref in module.state_dict().items():
            assert not torch.equal(ref, init[name][i]), "the reference did not train"
            torch.testing.assert_close(params[name][i], ref, atol=1e-5, rtol=1e-4, msg=f"model {i} {name}")
    return tasks, params, records


@pytest.mark.parametrize(
    ("arch", "task_ids"),
    [
        (ArchSpec("mlp", (64, 16, 3), "relu"), ["digits-subset-3-5-8"] * 3),
        (ArchSpec("cnn", (4, 8, 3), "gelu"), ["digits-subset-3-5-8"] * 3),
        # different tasks (and training-set sizes) in one batch: the smaller ones cycle their own permutation
        (
            ArchSpec("mlp", (64, 8, 8, 2), "tanh"),
            ["digits-subset-0-1", "digits-subset-4-9", "digits-subset-3-8"],
        ),
        (ArchSpec("mlp", (13, 8, 3), "relu"), ["wine", "wine", "wine"]),
        (ArchSpec("inr", (2, 16, 1), "relu"), ["digits-image-3", "digits-image-17", "digits-image-40"]),
    ],
    ids=["mlp-one-task", "cnn-one-task", "mlp-three-tasks", "wine", "inr"],
)
def test_batched_equals_per_model_adam(arch, task_ids):
    check_against_reference(arch, task_ids, Recipe("adam", lr=0.01, epochs=3, batch_size=32))


def test_batched_equals_per_model_sgd():
    arch = ArchSpec("mlp", (64, 16, 2), "relu")
    recipe = Recipe("sgd", lr=0.05, momentum=0.9, weight_decay=1e-3, epochs=3, batch_size=32)
    check_against_reference(arch, ["digits-subset-0-1", "digits-subset-4-9", "digits-subset-4-9"], recipe)


def test_adam_weight_decay():
    arch = ArchSpec("mlp", (64, 8, 2), "gelu")
    recipe = Recipe("adam", lr=0.02, weight_decay=0.01, epochs=2, batch_size=16)
    check_against_reference(arch, ["digits-subset-2-7", "digits-subset-5-6", "digits-subset-2-7"], recipe)


def test_recorded_metrics_equal_evaluate_module():
    arch = ArchSpec("mlp", (64, 16, 2), "relu")
    tasks = [get_task(t) for t in ("digits-subset-0-1", "digits-subset-4-9", "digits-subset-3-8")]
    init = arch.init_params(3, torch.Generator().manual_seed(0))
    params, records = train_batched(arch, tasks, init, Recipe(epochs=2), torch.Generator().manual_seed(0))
    assert len(records) == 3
    for i, task in enumerate(tasks):
        module = arch.build()
        module.load_state_dict({n: p[i] for n, p in params.items()})
        for split in SPLITS:
            m = evaluate_module(module, task, split)
            assert records[i][f"{split}_acc"] == m["acc"]
            assert records[i][f"{split}_loss"] == pytest.approx(m["loss"], abs=1e-5)
        assert records[i]["train_acc"] > 0.9  # two epochs are plenty for two digit classes


def test_training_is_seeded():
    arch = ArchSpec("mlp", (64, 8, 3), "relu")
    tasks = [get_task("digits-subset-3-5-8")] * 2
    init = arch.init_params(2, torch.Generator().manual_seed(0))
    recipe = Recipe(epochs=1)
    a, ra = train_batched(arch, tasks, init, recipe, torch.Generator().manual_seed(5))
    b, rb = train_batched(arch, tasks, init, recipe, torch.Generator().manual_seed(5))
    c, _ = train_batched(arch, tasks, init, recipe, torch.Generator().manual_seed(6))
    assert all(torch.equal(a[n], b[n]) for n in a) and ra == rb
    assert not torch.equal(a["layers.0.weight"], c["layers.0.weight"])
    # the two networks share init and task but not data order, so they end up different
    assert not torch.equal(a["layers.0.weight"][0], a["layers.0.weight"][1])


def test_epoch_order():
    sizes = torch.tensor([5, 3, 1])
    order = epoch_order(sizes, 5, torch.Generator().manual_seed(0))
    assert order.shape == (3, 5)
    for row, n in zip(order, sizes.tolist()):
        assert sorted(row[:n].tolist()) == list(range(n))  # a permutation of the model's own examples
        assert row.tolist() == [row[j % n].item() for j in range(5)]  # then cycled to the batch length
    again = epoch_order(sizes, 5, torch.Generator().manual_seed(0))
    assert torch.equal(order, again)


def test_recipe_and_task_errors():
    with pytest.raises(ConfigError, match="optimizer"):
        Recipe(optimizer="lbfgs")
    with pytest.raises(ConfigError):
        Recipe(lr=0)
    arch = ArchSpec("mlp", (64, 8, 2))
    with pytest.raises(ConfigError, match="digits-subset-3-5-8"):
        train_batched(
            arch, [get_task("digits-subset-3-5-8")], arch.init_params(1), Recipe(epochs=1), torch.Generator()
        )
