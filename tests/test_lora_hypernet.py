"""The task-code hypernetwork, bench_lora's learned reference: it starts at the mean adapter and learns."""

from __future__ import annotations

import pytest
import torch

from weightgen.generators.task_loss import AdapterTaskLoss
from weightgen.lora_hypernet import LoRAHypernet, train_hypernet
from weightgen.tasks import get_task
from weightgen.zoo.lora_build import zoo_base

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def zoo_factors(store) -> dict[str, torch.Tensor]:
    ids = range(len(store.records))
    return {n: torch.stack([store.state_dict(i)[n] for i in ids]) for n in store.state_dict(0)}


def test_hypernet_starts_at_the_mean_adapter_for_every_task(debug_lora_zoo):
    f = zoo_factors(debug_lora_zoo)
    shapes = {n: tuple(v.shape[1:]) for n, v in f.items()}
    mean = torch.cat([v.mean(0).flatten() for v in f.values()])
    net = LoRAHypernet(shapes, mean, hidden=16)
    out = net.adapters([get_task("digits-rotate-10"), get_task("digits-noise-0.2+blur-1")])
    for n, v in f.items():
        assert out[n].shape == (2, *v.shape[1:])
        assert torch.allclose(out[n], v.mean(0).expand_as(out[n]), atol=1e-6)
    with pytest.raises(ValueError, match="numbers"):
        LoRAHypernet(shapes, mean[:-1])


def test_hypernet_learns_its_seen_tasks_through_the_task_loss(debug_lora_zoo):
    lora = debug_lora_zoo.manifest["lora"]
    base = zoo_base(debug_lora_zoo)
    f = zoo_factors(debug_lora_zoo)
    tasks = sorted({r["task"] for r in debug_lora_zoo.records})
    kw = dict(steps=40, tasks_per_step=4, examples=16, hidden=32, lr=3e-3)
    net = train_hypernet(base, lora, f, tasks, **kw)
    again = train_hypernet(base, lora, f, tasks, **kw)
    specs = [get_task(t) for t in tasks]
    learnt, repeat = net.adapters(specs), again.adapters(specs)
    assert all(torch.equal(learnt[n], repeat[n]) for n in learnt)  # seeded: one adapter per task, every run
    mean = {n: v.mean(0, keepdim=True).expand(len(tasks), *v.shape[1:]) for n, v in f.items()}
    score = AdapterTaskLoss(base, lora, tasks, examples=64)
    before = score(mean, tasks, torch.Generator().manual_seed(1)).mean()
    after = score(learnt, tasks, torch.Generator().manual_seed(1)).mean()
    assert after < before  # it moved each task's adapter away from the mean, towards the task
    assert not torch.allclose(learnt[next(iter(learnt))][0], learnt[next(iter(learnt))][1])  # tasks differ
    with pytest.raises(ValueError, match="steps"):
        train_hypernet(base, lora, f, tasks, steps=0)
