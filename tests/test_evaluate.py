"""The evaluation harness: accuracy statistics, novelty, baselines, from-scratch and fine-tuning
references, and the JSON report of `evaluate_samples`, on the debug zoo."""

from __future__ import annotations

import json
import math

import pytest
import torch

from weightgen.baselines import (
    average_baseline,
    finetune_steps,
    gaussian_baseline,
    noise_baseline,
    retrieval_baseline,
    train_from_scratch,
    zoo_recipe,
)
from weightgen.errors import ArchError, ConfigError
from weightgen.evaluate import (
    EvalConfig,
    accuracy_stats,
    evaluate_flat,
    evaluate_samples,
    metrics,
    probe_predictions,
    score_flat,
)
from weightgen.novelty import nearest_zoo_distance, wrong_set_iou
from weightgen.space.symmetry import canonicalize, match, permute, random_permutation
from weightgen.specs import ArchSpec
from weightgen.tasks import get_task
from weightgen.text import TextEncoder
from weightgen.zoo.trainer import Recipe

pytestmark = pytest.mark.usefixtures("torch_one_thread")

MLP3 = "mlp-64-16-3-relu"  # debug zoo: tasks 0-7-8, 1-7-9, 2-3-5 seen, 3-5-8 held out; 2 seeds each
SEEN, HELD = get_task("digits-subset-0-7-8"), get_task("digits-subset-3-5-8")


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


def zoo_models(store, slug: str, task_id: str | None = None) -> tuple[ArchSpec, torch.Tensor, list[dict]]:
    """(arch, flat (M, P), records) of one arch of the zoo, held-out models included."""
    arch = store.archs[slug]
    params, records = store.load_arch(slug, include_held_out=True)
    flat = arch.layout().flatten(params)
    keep = [i for i, r in enumerate(records) if task_id is None or r["task"] == task_id]
    return arch, flat[keep], [records[i] for i in keep]


def test_accuracy_stats_count_non_finite_models_and_leave_them_out():
    s = accuracy_stats(torch.tensor([0.5, 1.0, float("nan"), 0.75, 0.9]), torch.tensor([True, True, True, True, False]))
    assert (s["n"], s["n_finite"], s["share_finite"]) == (5, 3, 0.6)
    assert s["mean"] == pytest.approx(0.75) and s["median"] == pytest.approx(0.75)
    assert (s["max"], s["min"]) == (1.0, 0.5)
    assert s["std"] == pytest.approx(math.sqrt(0.125 / 3))
    empty = accuracy_stats(torch.tensor([float("nan")]))
    assert empty["n_finite"] == 0 and empty["share_finite"] == 0.0 and empty["mean"] is None


def test_equal_counts_give_equal_accuracy_medians():
    # 217 examples: models right on 209 and 211 have the median count 210, the same as one model right
    # on 210; their accuracies must compare equal (a float32 median came out 3e-8 low)
    y = torch.zeros(217, dtype=torch.long)
    logits = torch.zeros(3, 217, 2)
    for row, right in enumerate((209, 211, 210)):
        logits[row, right:, 1] = 1.0  # the rest predict class 1
    acc, _ = metrics(logits, y, "ce")
    assert acc.tolist() == [209 / 217, 211 / 217, 210 / 217]
    assert accuracy_stats(acc[:2])["median"] == accuracy_stats(acc[2:])["median"]


def test_score_flat_matches_evaluate_flat_and_flags_models_that_do_not_run(debug_zoo):
    arch, flat, _ = zoo_models(debug_zoo, MLP3)
    broken = torch.stack([torch.full_like(flat[0], float("nan")), torch.full_like(flat[0], 3e38)])
    s = score_flat(arch, torch.cat([flat, broken]), SEEN)
    assert s["finite"].tolist() == [True] * len(flat) + [False, False]  # NaN weights; finite weights, inf outputs
    assert torch.equal(s["acc"][: len(flat)], evaluate_flat(arch, flat, SEEN)["acc"])
    assert s["acc"][len(flat):].isnan().all()
    assert torch.allclose(s["wrong"][: len(flat)].double().mean(1), 1 - s["acc"][: len(flat)])


@pytest.mark.parametrize("slug", [MLP3, "cnn-4-3-relu"])
def test_a_zoo_model_is_at_distance_zero_from_itself_even_permuted(debug_zoo, slug):
    arch, flat, _ = zoo_models(debug_zoo, slug)
    g = torch.Generator().manual_seed(0)
    query = random_permutation(arch, flat, g)
    for candidates in (None, 2):
        d = nearest_zoo_distance(arch, query, flat, candidates=candidates)
        assert d["distance"].max() < 1e-6
        assert d["index"].tolist() == list(range(len(flat)))
    # leave-one-out: the nearest other model is genuinely elsewhere
    d = nearest_zoo_distance(arch, query, flat, exclude=torch.arange(len(flat)))
    assert (d["distance"] > 0.05).all() and (d["index"] != torch.arange(len(flat))).all()


def test_distance_is_relative_l2_after_weight_matching(debug_zoo):
    arch, flat, _ = zoo_models(debug_zoo, MLP3)
    a, b = flat[0], flat[5]
    # one hidden layer: weight matching is one exact assignment, so d is exactly this
    expected = ((permute(arch, a, match(arch, a, b)) - b).norm() / b.norm()).item()
    d = nearest_zoo_distance(arch, a[None], b[None])
    assert d["distance"].item() == pytest.approx(expected, rel=1e-6)
    assert d["distance"].item() <= ((a - b).norm() / b.norm()).item()
    nan = nearest_zoo_distance(arch, torch.full_like(a, float("nan"))[None], flat)
    assert nan["distance"].isnan().all() and nan["index"].tolist() == [-1]


def test_wrong_set_iou():
    wrong = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
    iou = wrong_set_iou(wrong, wrong)
    assert torch.equal(iou.diagonal(), torch.ones(3, dtype=torch.float64))  # every set with itself
    assert iou[0, 2] == pytest.approx(1 / 3) and iou[0, 1] == 0.0
    assert wrong_set_iou(torch.zeros(1, 4, dtype=torch.bool), torch.zeros(1, 4, dtype=torch.bool)).item() == 1.0


def test_noise_baseline_lands_on_the_target_accuracy(debug_zoo):
    arch, flat, _ = zoo_models(debug_zoo, MLP3, SEEN.id)  # both models are at 100% test accuracy
    sigmas = []
    for target in (0.8, 0.6):
        g = torch.Generator().manual_seed(0)
        noisy, info = noise_baseline(arch, flat, SEEN, target, n=32, generator=g)
        acc = evaluate_flat(arch, noisy, SEEN)["acc"].mean().item()
        assert info["matched"] and abs(acc - target) <= 0.01 and acc == pytest.approx(info["acc"])
        assert noisy.shape == (32, flat.shape[1])
        sigmas.append(info["sigma"])
    assert sigmas[1] > sigmas[0]  # lower accuracy takes more noise
    _, info = noise_baseline(arch, flat, SEEN, 1.5, n=8)  # above what any model can reach
    assert not info["matched"] and info["sigma"] == pytest.approx(1e-4)


def test_average_baseline_of_copies_is_the_model(debug_zoo):
    arch, flat, _ = zoo_models(debug_zoo, MLP3)
    model = flat[2]
    assert torch.allclose(average_baseline(arch, model.expand(5, -1)), model[None], atol=1e-6)
    # permuted copies are aligned before averaging, so their average is still the same function
    copies = random_permutation(arch, model.expand(5, -1).clone(), torch.Generator().manual_seed(1))
    avg = average_baseline(arch, copies)
    assert nearest_zoo_distance(arch, avg, model[None])["distance"].item() < 1e-6
    assert torch.equal(average_baseline(arch, flat, n=1), flat[:1])


def test_gaussian_baseline_fits_the_aligned_zoo_mean_and_std(debug_zoo):
    arch, flat, _ = zoo_models(debug_zoo, MLP3)
    aligned, _ = canonicalize(arch, flat.float())
    mean, std = aligned.mean(0), aligned.std(0)
    n = 4000
    draws = gaussian_baseline(arch, flat, n=n, generator=torch.Generator().manual_seed(0))
    # every coordinate's mean within sampling error (the shared init leaves some with std 0)
    assert ((draws.mean(0) - mean).abs() <= 5.5 * std / math.sqrt(n) + 1e-6).all()
    assert torch.allclose(draws.std(0), std, rtol=0.1, atol=1e-6)
    one = gaussian_baseline(arch, flat[:1], n=3)
    assert torch.equal(one, flat[:1].expand(3, -1))


def test_retrieval_never_returns_the_query_task(debug_zoo, encoder):
    arch, _, records = zoo_models(debug_zoo, MLP3)
    for task_id in sorted({r["task"] for r in records}):
        flat, info = retrieval_baseline(arch, get_task(task_id), debug_zoo, encoder)
        assert info["task"] != task_id and info["task"] not in debug_zoo.held_out
        assert all(r["task"] != task_id for r in info["ranking"])
        assert -1 <= info["similarity"] <= 1 and info["similarity"] == info["ranking"][0]["similarity"]
        expected = [r for r in records if r["task"] == info["task"]]
        assert info["ids"] == [r["id"] for r in expected]
        assert torch.equal(flat, torch.stack([arch.layout().flatten(debug_zoo.state_dict(r["id"])) for r in expected]))
    everything = {r["task"] for r in records}
    assert retrieval_baseline(arch, SEEN, debug_zoo, encoder, held_out=everything - {SEEN.id}) is None


def test_finetuning_a_trained_model_takes_no_steps_and_beats_random(debug_zoo):
    arch, trained, records = zoo_models(debug_zoo, MLP3, SEEN.id)
    recipe = zoo_recipe(debug_zoo)
    assert recipe.epochs == 3  # the debug zoo's recipe, read back from zoo.json
    g = torch.Generator().manual_seed(0)
    scratch = train_from_scratch(arch, SEEN, recipe, seeds=2, generator=g)
    reference = evaluate_flat(arch, scratch, SEEN)["acc"].mean().item()
    assert reference > 0.8
    target = 0.99 * reference
    random_starts = arch.layout().flatten(arch.init_params(4, g))
    res = finetune_steps(arch, SEEN, torch.cat([trained, random_starts]), recipe, target, g)
    steps_per_epoch = math.ceil(len(SEEN.split("train")[0]) / recipe.batch_size)
    assert res["budget"] == recipe.epochs * steps_per_epoch
    assert res["steps"][:2].tolist() == [0, 0]  # trained models start above the target
    random_steps = res["steps"][2:]
    assert (random_steps != 0).all() and (random_steps > 0).any()  # random starts need training, most get there
    assert ((random_steps == -1) | (res["acc"][2:] >= target)).all()


def test_report_warns_when_the_zoo_errs_on_too_little_of_the_probe(debug_zoo):
    arch, flat, _ = zoo_models(debug_zoo, MLP3, SEEN.id)
    error = probe_predictions(arch, flat, SEEN)["wrong"].double().mean(1).median().item()

    def caveat(floor: float) -> tuple[float, bool]:
        r = evaluate_samples(arch, flat[:1], SEEN, debug_zoo, baselines=False, cfg=EvalConfig(min_probe_error=floor))
        return r["probe"]["zoo_error_median"], any("little resolution" in n for n in r["notes"])

    assert 0 < error < 1
    assert caveat(1.0) == (error, True)
    assert caveat(0.0) == (error, False)


def test_report_on_a_seen_task(debug_zoo):
    arch, flat, records = zoo_models(debug_zoo, MLP3, SEEN.id)
    samples = torch.cat([random_permutation(arch, flat, torch.Generator().manual_seed(0)),
                         torch.full_like(flat[:1], float("nan"))])
    report = evaluate_samples(arch, samples, SEEN, debug_zoo)
    json.dumps(report, allow_nan=False)  # plain numbers, strings and lists only
    assert report["unseen"] is False and report["metric"] == "accuracy"
    gen = report["generated"]
    assert (gen["stats"]["n"], gen["stats"]["n_finite"]) == (3, 2) and gen["acc"][2] is None
    assert gen["stats"]["mean"] == pytest.approx(sum(r["test_acc"] for r in records) / 2)
    assert any("1 of 3 generated samples" in n for n in report["notes"])
    # the samples are permuted zoo models: distance 0 to themselves, the same mistakes
    assert max(gen["novelty"]["distance"]["per_model"][:2]) < 1e-6
    assert gen["novelty"]["nearest_id"] == [r["id"] for r in records] + [None]
    # ... and on the probe: the same mistakes, no disagreement, nothing new
    assert gen["novelty"]["probe_iou"]["per_model"] == [1.0, 1.0, None]
    assert gen["novelty"]["disagreement"]["per_model"] == [0.0, 0.0, None]
    assert gen["novelty"]["nearest_probe_id"] == [r["id"] for r in records] + [None]
    assert gen["novelty"]["as_new"] == 0.0
    # the zoo's own models are compared with the others only
    assert report["zoo"]["ids"] == [r["id"] for r in records]
    assert min(report["zoo"]["novelty"]["distance"]["per_model"]) > 0.05
    assert min(report["zoo"]["novelty"]["disagreement"]["per_model"]) > 0
    assert report["probe"]["size"] >= 3000
    assert report["probe"]["loo_disagreement_median"] == pytest.approx(
        report["zoo"]["novelty"]["disagreement"]["median"])
    # no retrieval for a seen task; the closed-form mean keeps the task's own offset
    assert set(report["baselines"]) == {"noise", "average", "gaussian", "mean", "mean+gaussian"}
    assert report["baselines"]["noise"]["target"] == gen["stats"]["mean"]
    mean, mean_g = report["baselines"]["mean"], report["baselines"]["mean+gaussian"]
    assert mean["stats"]["n"] == 1 and mean["seen_offset"] is True
    assert mean_g["stats"]["n"] == EvalConfig().n_baseline and mean_g["stats"]["share_finite"] == 1.0
    assert mean["stats"]["mean"] > 0.8  # the debug zoo's mean network of a seen task works
    assert report["random_init"]["stats"]["n"] == EvalConfig().n_random
    assert report["random_init"]["stats"]["mean"] < 0.7
    # scratch is one of the baselines, scored on a seen task too; fine-tuning was not asked for
    assert report["scratch"]["stats"]["n"] == EvalConfig().n_scratch and report["finetune"] is None
    assert report["scratch"]["novelty"]["disagreement"]["min"] > 0


def test_report_on_a_held_out_task_with_finetuning(debug_zoo, encoder):
    arch, flat, records = zoo_models(debug_zoo, MLP3, HELD.id)
    report = evaluate_samples(arch, flat, HELD, debug_zoo, finetune=True, encoder=encoder)
    json.dumps(report, allow_nan=False)
    assert report["unseen"] is True
    retrieval = report["baselines"]["retrieval"]
    assert retrieval["task"] not in (HELD.id, *debug_zoo.held_out)
    # the held-out models are not in the novelty pool: none is anyone's nearest model
    assert not set(report["generated"]["novelty"]["nearest_id"]) & {r["id"] for r in records}
    assert report["scratch"]["stats"]["n"] == EvalConfig().n_scratch
    ft = report["finetune"]
    # the stop condition reads val: the target is a fraction of the from-scratch val accuracy
    assert ft["target_split"] == "val"
    assert ft["target"] == pytest.approx(0.99 * ft["reference_val_acc"])
    assert ft["reference_acc"] == report["scratch"]["stats"]["mean"]  # reported on test
    assert len(ft["generated"]["final_acc"]) == 2 and len(ft["generated"]["final_val_acc"]) == 2
    assert ft["generated"]["n"] == 2 and ft["random"]["n"] == EvalConfig().n_random
    # the held-out models were trained on this task with this recipe: (almost) there already
    assert ft["generated"]["median_steps"] <= 2 and ft["speedup"] > 1


def test_report_without_a_zoo_and_for_a_task_the_zoo_lacks(debug_zoo, encoder):
    arch, flat, _ = zoo_models(debug_zoo, "mlp-64-16-2-relu")
    task = get_task("digits-subset-1-2")  # no model of it in the zoo
    alone = evaluate_samples(arch, flat[:2], task)
    json.dumps(alone, allow_nan=False)
    assert alone["unseen"] is None and alone["zoo"] is None and alone["baselines"] == {}
    assert alone["generated"]["novelty"]["distance"] is None
    assert alone["generated"]["novelty"]["probe_iou"] is None and alone["probe"] is None
    assert alone["random_init"]["stats"]["n_finite"] == EvalConfig().n_random

    new = evaluate_samples(arch, flat[:2], task, debug_zoo, encoder=encoder, cfg=EvalConfig(n_scratch=2))
    json.dumps(new, allow_nan=False)
    assert new["unseen"] is True and new["zoo"] is None
    assert set(new["baselines"]) == {"retrieval", "mean", "mean+gaussian"}
    assert new["baselines"]["mean"]["seen_offset"] is False  # an unseen task gets the ridge map alone
    assert new["scratch"]["stats"]["n"] == 2 and new["scratch"]["stats"]["mean"] > 0.8
    assert new["generated"]["novelty"]["distance"]["max"] < 1e-6  # the samples are zoo models of other tasks


def test_held_out_argument_makes_a_task_unseen(debug_zoo, encoder):
    arch, flat, records = zoo_models(debug_zoo, MLP3, SEEN.id)
    report = evaluate_samples(arch, flat, SEEN, debug_zoo, held_out={SEEN.id}, baselines=["retrieval"],
                              from_scratch=False, encoder=encoder)
    assert report["unseen"] is True and set(report["baselines"]) == {"retrieval"}
    assert report["baselines"]["retrieval"]["task"] != SEEN.id and report["scratch"] is None
    assert SEEN.id not in report["generated"]["novelty"]["nearest_task"]  # its models left the pool
    # two zoo models: each one's leave-one-out partner is the other
    assert report["zoo"]["novelty"]["nearest_probe_id"] == [r["id"] for r in records][::-1]


def test_report_on_an_image_fitting_task_with_finetuning():
    arch, task = ArchSpec("inr", (2, 16, 16, 1)), get_task("digits-image-0")
    recipe = Recipe(epochs=100, lr=0.01)
    trained = train_from_scratch(arch, task, recipe, seeds=2, generator=torch.Generator().manual_seed(5))
    report = evaluate_samples(arch, trained, task, finetune=True, recipe=recipe,
                              cfg=EvalConfig(n_scratch=2, n_random=4))
    json.dumps(report, allow_nan=False)
    assert report["metric"] == "r2" and report["generated"]["novelty"]["probe_iou"] is None
    ft = report["finetune"]
    assert ft["budget"] == 100 and ft["random"]["n"] == 4
    assert ft["generated"]["reached"] == 2 and ft["speedup"] > 1


def test_bad_input_gets_one_clear_error(debug_zoo):
    arch, flat, _ = zoo_models(debug_zoo, MLP3)
    with pytest.raises(ArchError, match="must be"):
        evaluate_samples(arch, flat[:, :-1], SEEN)
    with pytest.raises(ArchError, match="does not fit"):
        evaluate_samples(arch, flat, get_task("digits-subset-0-3"))
    with pytest.raises(ConfigError, match="unknown baseline"):
        evaluate_samples(arch, flat, SEEN, baselines=["copying"])
    with pytest.raises(ConfigError, match="split"):
        EvalConfig(split="dev")
