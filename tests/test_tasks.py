"""Tasks: deterministic stratified splits, one global digits split, label remapping, prompt parsing."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch

from weightgen import tasks
from weightgen.errors import TaskError
from weightgen.tasks import SPLITS, TaskSpec, all_subset_tasks, get_task, subset_task

# one task of every kind (and the edge forms of ids: negative angle, fractional level, all ten digits)
TASK_IDS = [
    "digits-subset-3-5",
    "digits-subset-3-5-8",
    "digits-subset-0-1-2-3-4-5-6-7-8-9",
    "digits-rotate-30",
    "digits-rotate--15",
    "digits-noise-0.3",
    "digits-invert",
    "digits-blur-1",
    "digits-blur-0.5",
    "digits-rotate-30+noise-0.2",
    "digits-rotate--15+blur-0.5+invert+noise-0.1",
    "digits-image-17",
    "iris",
    "wine",
    "breast-cancer",
]
ALL_TEN = "digits-subset-0-1-2-3-4-5-6-7-8-9"


def rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x}


def fingerprint(task_ids) -> str:
    h = hashlib.sha256()
    for tid in task_ids:
        for s in SPLITS:
            x, y = get_task(tid).split(s)
            h.update(x.numpy().tobytes())
            h.update(y.numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("tid", TASK_IDS)
def test_get_task_round_trip(tid):
    task = get_task(tid)
    assert task.id == tid
    assert get_task(task.id) == task


def test_splits_are_deterministic(repo_root):
    ids = ["digits-subset-3-5-8", "digits-noise-0.3", "digits-rotate-30", "iris", "breast-cancer"]
    first = fingerprint(ids)
    tasks._digits.cache_clear()  # recompute from scratch rather than read the cached tensors
    tasks._task_data.cache_clear()
    assert fingerprint(ids) == first
    code = f"from tests.test_tasks import fingerprint; print(fingerprint({ids!r}))"
    fresh = subprocess.run(
        [sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True
    )
    assert fresh.stdout.strip() == first


@pytest.mark.parametrize(
    ("tid", "total"), [(ALL_TEN, 1797), ("iris", 150), ("wine", 178), ("breast-cancer", 569)]
)
def test_splits_disjoint_and_stratified(tid, total):
    task = get_task(tid)
    parts = {s: task.split(s) for s in SPLITS}
    n = {s: len(x) for s, (x, _) in parts.items()}
    assert sum(n.values()) == total
    if tid != "iris":  # iris has duplicate rows, so only the counts can show it is a partition
        sets = {s: rows(x) for s, (x, _) in parts.items()}
        assert len(sets["train"] | sets["val"] | sets["test"]) == total
    assert abs(n["train"] / total - 0.6) < 0.02 and abs(n["test"] / total - 0.2) < 0.02
    y_all = torch.cat([y for _, y in parts.values()])
    overall = torch.bincount(y_all) / len(y_all)
    for s, (_, y) in parts.items():
        share = torch.bincount(y, minlength=len(overall)) / len(y)
        assert (share - overall).abs().max() < 0.02, s


def test_subset_tasks_use_the_one_global_split():
    full = {s: rows(get_task(ALL_TEN).split(s)[0]) for s in SPLITS}
    assert sum(len(v) for v in full.values()) == 1797  # every digits image is in exactly one split
    a, b = get_task("digits-subset-3-5-8"), get_task("digits-subset-5-8-9")
    for task in (a, b, get_task("digits-subset-0-1")):
        for s in SPLITS:
            assert rows(task.split(s)[0]) <= full[s]
    for t1, t2 in ((a, b), (b, a)):
        assert not rows(t1.split("test")[0]) & rows(t2.split("train")[0])
        assert not rows(t1.split("val")[0]) & rows(t2.split("train")[0])


def test_shift_tasks_use_the_one_global_split():
    for s in SPLITS:
        x, y = get_task(ALL_TEN).split(s)
        xi, yi = get_task("digits-invert").split(s)
        assert torch.equal(yi, y)
        assert torch.allclose(xi, 1.0 - x)
        xr, yr = get_task("digits-rotate-30").split(s)
        assert torch.equal(yr, y) and xr.shape == x.shape and not torch.equal(xr, x)


def test_subset_labels_are_remapped():
    task = get_task("digits-subset-3-5-8")
    assert task.out_dim == 3 and task.in_dim == 64
    for s in SPLITS:
        x, y = task.split(s)
        x10, y10 = get_task(ALL_TEN).split(s)
        assert y.dtype == torch.int64 and set(y.tolist()) == {0, 1, 2}
        for new, old in enumerate((3, 5, 8)):
            assert rows(x[y == new]) == rows(x10[y10 == old])


def test_task_sizes():
    assert (get_task("iris").in_dim, get_task("iris").out_dim) == (4, 3)
    assert (get_task("wine").in_dim, get_task("wine").out_dim) == (13, 3)
    assert (get_task("breast-cancer").in_dim, get_task("breast-cancer").out_dim) == (30, 2)
    assert (get_task("digits-noise-0.3").in_dim, get_task("digits-noise-0.3").out_dim) == (64, 10)
    image = get_task("digits-image-17")
    assert (image.in_dim, image.out_dim, image.loss) == (2, 1, "mse")
    x, y = image.split("train")
    assert x.shape == (64, 2) and y.shape == (64, 1)


def test_tabular_features_standardised_on_train():
    x, _ = get_task("wine").split("train")
    torch.testing.assert_close(x.mean(0), torch.zeros(13), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(13), atol=1e-4, rtol=0)


@pytest.mark.parametrize("tid", TASK_IDS)
def test_every_task_has_three_descriptions(tid):
    descriptions = get_task(tid).descriptions
    assert len(descriptions) >= 3
    assert len(set(descriptions)) == len(descriptions)
    assert all(d.strip() for d in descriptions)


@pytest.mark.parametrize(
    ("prompt", "tid"),
    [
        ("tell 4s apart from 9s", "digits-subset-4-9"),
        ("digits three, five and eight", "digits-subset-3-5-8"),
        ("handwritten digits rotated by 30 degrees", "digits-rotate-30"),
        ("classify handwritten digits 3, 5 and 8 with an MLP 64-32-3", "digits-subset-3-5-8"),
        ("tell fours from nines", "digits-subset-4-9"),
        ("digits 0 to 4", "digits-subset-0-1-2-3-4"),
        ("all ten digits", ALL_TEN),
        ("digits rotated 30°", "digits-rotate-30"),
        ("noisy digits", "digits-noise-0.2"),
        ("inverted digits", "digits-invert"),
        ("digits rotated by 25 degrees with noise 0.1", "digits-rotate-25+noise-0.1"),
        ("blurred digits with noise 0.3", "digits-blur-1+noise-0.3"),  # blur at its default, not 0.3
        ("noisy, colour-inverted digits", "digits-invert+noise-0.2"),
        ("fit digit image 17 with an INR", "digits-image-17"),
        ("classify iris flowers", "iris"),
        ("tell the three wine cultivars apart", "wine"),
        ("breast cancer", "breast-cancer"),
        ("diagnose malignant tumours", "breast-cancer"),
    ],
)
def test_from_prompt(prompt, tid):
    assert TaskSpec.from_prompt(prompt) == get_task(tid)


def _description_cases():
    for tid in TASK_IDS:
        for d in get_task(tid).descriptions:
            yield pytest.param(d, tid, id=f"{tid}:{d}")


@pytest.mark.parametrize(("prompt", "tid"), list(_description_cases()))
def test_own_descriptions_parse_back(prompt, tid):
    """A generator is trained on these descriptions, so each must read back as its own task."""
    assert TaskSpec.from_prompt(prompt) == get_task(tid)


@pytest.mark.parametrize(
    ("prompt", "words"),
    [
        ("classify cats vs dogs", ["'cats'", "'dogs'"]),
        ("handwritten digits rotated", ["angle"]),
        ("digits rotated by some amount", ["angle"]),
        ("only the digit 7", ["7", "two classes"]),
        ("", ["empty"]),
        ("   ", ["empty"]),
        ("classify digits 3 and 12", ["12"]),
        ("digits 3 and 5 rotated by 30 degrees", ["shift"]),
        ("digits 3 and 5 rotated by 30 degrees and blurred", ["rotate, blur"]),
    ],
)
def test_from_prompt_errors_name_the_problem(prompt, words):
    with pytest.raises(TaskError) as e:
        TaskSpec.from_prompt(prompt)
    for w in words:
        assert w in str(e.value)


def test_bad_task_ids():
    for bad in ["cats", "digits-subset-3", "digits-subset-3-3", "digits-image-5000", "digits-rotate",
                "digits-rotate-30+rotate-40", "digits-rotate-30+", "digits-invert+subset-3-5"]:
        with pytest.raises(TaskError):
            get_task(bad)
    with pytest.raises(TaskError):
        subset_task([4])
    with pytest.raises(TaskError):
        get_task("iris").split("holdout")


def test_negative_noise_is_a_task_error():
    with pytest.raises(TaskError):
        get_task("digits-noise--0.3").split("train")


def test_task_code_layout():
    from weightgen.tasks import TASK_CODE_DIM, task_code

    code = task_code(get_task("digits-subset-3-5-8"))
    assert code.shape == (TASK_CODE_DIM,) and code.nonzero().flatten().tolist() == [3, 15, 28]
    rotate = task_code(get_task("digits-rotate-45"))
    assert rotate[[10 * c + c for c in range(10)]].eq(1).all() and rotate[100] == 1 and rotate[104] == 0.5
    assert task_code(get_task("digits-invert"))[102] == 1
    assert task_code(get_task("wine")).nonzero().flatten().tolist() == [106]
    assert not task_code(get_task("digits-image-3")).any()
    # every subset task has its own code
    codes = {tuple(task_code(t).tolist()) for k in (2, 3) for t in all_subset_tasks(k)}
    assert len(codes) == 45 + 120


def test_combined_shifts_apply_in_order_and_name_themselves_one_way():
    both = get_task("digits-noise-0.2+rotate-30")
    assert both.id == "digits-rotate-30+noise-0.2" and get_task(both.id) == both
    assert both.shifts == (("rotate", 30.0), ("noise", 0.2))
    from weightgen.tasks import _digits, _shifted

    x = _digits()[0]  # noise is drawn over the whole set, before the split
    rotated = _shifted(get_task("digits-rotate-30"), x)
    assert (_shifted(both, x) == _shifted(get_task("digits-noise-0.2"), rotated)).all()
    assert not (_shifted(both, x) == _shifted(get_task("digits-noise-0.2"), x)).all()
    assert (both.split("test")[1] == get_task(ALL_TEN).split("test")[1]).all()


def test_task_code_of_combined_shifts_and_older_generators():
    from weightgen.tasks import task_code

    code = task_code(get_task("digits-rotate-45+blur-2+invert"))
    assert code[100:104].tolist() == [1, 0, 1, 1] and code[108:112].tolist() == [0.5, 0, 1, 2]
    assert code[104] == 0.5  # the first shift's level, where generators saved before combinations read it
    # a generator saved with the 108-entry code reads the first 108 entries, which did not change
    single = task_code(get_task("digits-noise-0.3"), 108)
    assert single.shape == (108,) and single[101] == 1 and single[104] == pytest.approx(0.3)
