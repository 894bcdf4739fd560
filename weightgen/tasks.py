"""Tasks: what a network in the zoo is trained to do, with data splits and plain-English text.

Every task comes from a dataset that ships with scikit-learn (nothing is downloaded):
- `digits-subset-3-5-8`: the 8x8 digits restricted to k >= 2 classes; output size k, labels in the
  sorted order of the classes (1,013 such tasks).
- `digits-rotate-30`, `digits-noise-0.3`, `digits-invert`, `digits-blur-1`: all ten digits, shifted;
  shifts combine with `+`, as in `digits-rotate-30+noise-0.2`, applied in the order rotate, blur,
  invert, noise (geometry, then optics, then the sensor), which is also the order of their ids.
- `iris`, `wine`, `breast-cancer`: the bundled tabular sets, features standardised on train.
- `digits-image-17`: fit the 17th training image as a coordinate network (x, y) -> intensity, for
  `inr` archs (only training images, so no test image of a classification task is ever fitted).

Splits are deterministic and stratified: the digits are split once, 60/20/20 by class with a fixed
seed, and every digits task takes its rows from that one split, so a test image of one task is never
a training image of another. `TaskSpec.from_prompt` reads tasks out of plain English
(`weightgen.task_text` holds the text: paraphrases and the prompt parser).
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass, replace

import numpy as np
import torch

from weightgen.errors import TaskError, short
from weightgen.specs import ArchSpec

SPLITS = ("train", "val", "test")
SPLIT_SEED = 0
SHIFTS = {"rotate", "noise", "invert", "blur"}
SHIFT_APPLY_ORDER = ("rotate", "blur", "invert", "noise")  # how combined shifts are applied and named
TABULAR = {"iris": "load_iris", "wine": "load_wine", "breast-cancer": "load_breast_cancer"}
MAX_ID_LENGTH = 100  # the longest real id, a four-shift combination, is about 50 characters


@dataclass(frozen=True)
class TaskSpec:
    """One task; build it with `get_task(id)` or `TaskSpec.from_prompt(text)`."""

    kind: str  # digits-subset | digits-shift | tabular | digits-image
    classes: tuple[int, ...] = ()
    shift: str = ""
    level: float = 0.0
    dataset: str = ""
    image: int = -1
    more: tuple[tuple[str, float], ...] = ()  # further shifts of a combined shift task, in SHIFT_APPLY_ORDER

    @property
    def id(self) -> str:
        if self.kind == "digits-subset":
            return "digits-subset-" + "-".join(map(str, self.classes))
        if self.kind == "digits-shift":
            return "digits-" + "+".join(s if s == "invert" else f"{s}-{number_text(v)}" for s, v in self.shifts)
        if self.kind == "digits-image":
            return f"digits-image-{self.image}"
        return self.dataset

    @property
    def shifts(self) -> tuple[tuple[str, float], ...]:
        """(shift, level) pairs of a shift task, in the order they are applied; () for other tasks."""
        return ((self.shift, self.level), *self.more) if self.kind == "digits-shift" else ()

    @property
    def loss(self) -> str:
        """'ce' (classification, metric: accuracy) or 'mse' (image fitting, metric: R^2)."""
        return "mse" if self.kind == "digits-image" else "ce"

    @property
    def in_dim(self) -> int:
        return self.split("train")[0].shape[1]

    @property
    def out_dim(self) -> int:
        if self.kind == "digits-subset":
            return len(self.classes)
        if self.kind == "digits-image":
            return 1
        return int(self.split("train")[1].max()) + 1

    @property
    def descriptions(self) -> list[str]:
        """At least three paraphrases; generators draw one at random per training example."""
        from weightgen.task_text import describe

        return describe(self)

    @property
    def description(self) -> str:
        return self.descriptions[0]

    def default_arch(self) -> ArchSpec:
        if self.kind == "digits-image":
            return ArchSpec("inr", (2, 32, 32, 1), "relu")
        return ArchSpec("mlp", (self.in_dim, 32, self.out_dim), "relu")

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(X float32 (n, in_dim), y) of one split; y is int64 labels, or float (n, 1) for images."""
        if name not in SPLITS:
            raise TaskError(f"unknown split '{name}'; known: {', '.join(SPLITS)}")
        return _task_data(self)[name]

    def to_dict(self) -> dict:
        return {"id": self.id, "description": self.description}

    @classmethod
    def from_prompt(cls, text: str) -> TaskSpec:
        return parse_prompt(text)


def parse_prompt(text: str) -> TaskSpec:
    """Read a task out of plain English; raises TaskError naming what it could not understand."""
    from weightgen.task_text import parse

    return parse(text)


# A task's structure as a fixed-length vector, for generators to condition on beside the prompt
# text: [0, 100) output j is digit c (one-hot at 10 j + c; subset and shift tasks), [100, 104) the
# shift, 104 its level (degrees / 90 for rotations), [105, 108) the tabular set, [108, 112) the level
# of each shift present (a combined shift has several; invert reads 1). Image-fitting tasks have no
# structure beyond their text and get zeros. The layout is part of saved generators: append new
# sections, never reorder; a generator saved with a shorter code reads its first entries (`dim`).
TASK_CODE_DIM = 112
_SHIFT_ORDER = ("rotate", "noise", "invert", "blur")
# the code's entries that hold a continuous shift level (inversion has none: its entry reads 1)
LEVEL_ENTRIES = (104, *(108 + i for i, s in enumerate(_SHIFT_ORDER) if s != "invert"))
_TABULAR_ORDER = ("iris", "wine", "breast-cancer")


def _level_code(shift: str, level: float) -> float:
    return level / 90.0 if shift == "rotate" else 1.0 if shift == "invert" else level


def task_code(task: TaskSpec, dim: int = TASK_CODE_DIM) -> torch.Tensor:
    """(dim,) float vector of the task's structure (see above): the code's first `dim` entries, so a
    generator saved when the code was shorter gets the code it was trained with."""
    code = torch.zeros(TASK_CODE_DIM)
    if task.kind in ("digits-subset", "digits-shift"):
        for j, c in enumerate(task.classes or range(10)):
            code[10 * j + c] = 1.0
    if task.kind == "digits-shift":
        code[104] = task.level / 90.0 if task.shift == "rotate" else task.level  # the first shift's (kept as it was)
        for shift, level in task.shifts:
            code[100 + _SHIFT_ORDER.index(shift)] = 1.0
            code[108 + _SHIFT_ORDER.index(shift)] = _level_code(shift, level)
    if task.kind == "tabular":
        code[105 + _TABULAR_ORDER.index(task.dataset)] = 1.0
    return code[:dim]


def get_task(task_id: str) -> TaskSpec:
    """The task with this stable id (see the module docstring for the id forms)."""
    # ids come from files and command lines too: anything but short text is refused here, before a
    # regex or int() sees it (int() of thousands of digits raises, a float level can overflow to inf)
    if not isinstance(task_id, str):
        raise TaskError(f"a task id must be text such as 'digits-subset-3-5-8', got {short(task_id)}")
    if len(task_id) > MAX_ID_LENGTH:
        raise TaskError(f"task ids are at most {MAX_ID_LENGTH} characters, got one of {len(task_id):,}")
    tid = task_id.strip().lower()
    if tid in TABULAR:
        return TaskSpec("tabular", dataset=tid)
    m = re.fullmatch(r"digits-subset((?:-\d)+)", tid)
    if m:
        return subset_task(int(c) for c in m.group(1)[1:].split("-"))
    parts = tid.removeprefix("digits-").split("+")
    if tid.startswith("digits-") and all(re.fullmatch(r"invert|(?:rotate|noise|blur)-(-?\d+(?:\.\d+)?)", p) for p in parts):
        return combined_shift_task(("invert", 0.0) if p == "invert" else (p.split("-", 1)[0], float(p.split("-", 1)[1]))
                                   for p in parts)
    m = re.fullmatch(r"digits-image-(\d+)", tid)
    if m and int(m.group(1)) < len(_digits()[2]["train"]):
        return TaskSpec("digits-image", image=int(m.group(1)))
    raise TaskError(
        f"unknown task id {short(task_id)}; ids look like 'digits-subset-3-5-8', 'digits-rotate-30', "
        "'digits-noise-0.3', 'digits-invert', 'digits-blur-1', 'digits-rotate-30+noise-0.2', 'digits-image-17', "
        "'iris', 'wine' or 'breast-cancer'"
    )


def shift_task(shift: str, level: float = 0.0) -> TaskSpec:
    if shift not in SHIFTS:
        raise TaskError(f"unknown shift '{shift}'; known: {', '.join(sorted(SHIFTS))}")
    if shift in ("noise", "blur") and level <= 0:
        raise TaskError(f"a {shift} level must be positive, got {number_text(level)}")
    return TaskSpec("digits-shift", shift=shift, level=0.0 if shift == "invert" else float(level))


def combined_shift_task(pairs) -> TaskSpec:
    """All ten digits under several shifts at once, e.g. [("rotate", 30), ("noise", 0.2)]; one pair
    gives the plain shift task. Each shift may appear once; they apply in SHIFT_APPLY_ORDER."""
    tasks = [shift_task(s, float(v)) for s, v in pairs]
    names = [t.shift for t in tasks]
    if not tasks or len(set(names)) != len(names):
        raise TaskError(f"a combined shift names each shift once, got {', '.join(names) or 'none'}")
    tasks.sort(key=lambda t: SHIFT_APPLY_ORDER.index(t.shift))
    return replace(tasks[0], more=tuple((t.shift, t.level) for t in tasks[1:]))


def subset_task(classes) -> TaskSpec:
    classes = tuple(sorted(set(int(c) for c in classes)))
    if len(classes) < 2 or not all(0 <= c <= 9 for c in classes):
        raise TaskError(f"a digits subset task needs at least two distinct classes in 0-9, got {list(classes)}")
    return TaskSpec("digits-subset", classes=classes)


def all_subset_tasks(k: int) -> list[TaskSpec]:
    """Every k-class digits subset task, in lexicographic order."""
    return [subset_task(c) for c in itertools.combinations(range(10), k)]


# -- data ----------------------------------------------------------------------------------------


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)  # pixels 0..16 -> 0..1
    return x, data.target.astype(np.int64), _stratified_split(data.target)


def _stratified_split(y: np.ndarray) -> dict[str, np.ndarray]:
    """60/20/20 per class, fixed seed: the same rows on every machine and every run."""
    rng = np.random.default_rng(SPLIT_SEED)
    parts = {s: [] for s in SPLITS}
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_train, n_val = round(0.6 * len(idx)), round(0.2 * len(idx))
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train : n_train + n_val])
        parts["test"].append(idx[n_train + n_val :])
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}


def _shifted(task: TaskSpec, x: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    imgs = x.reshape(-1, 8, 8)
    for shift, level in task.shifts:
        if shift == "rotate":
            imgs = np.stack([ndimage.rotate(im, level, reshape=False, order=1) for im in imgs])
        elif shift == "blur":
            imgs = np.stack([ndimage.gaussian_filter(im, level) for im in imgs])
        elif shift == "invert":
            imgs = 1.0 - imgs
        elif shift == "noise":
            # noise is part of the task, not of training: a fixed seed gives every model the same images
            imgs = imgs + np.random.default_rng(SPLIT_SEED).normal(0.0, level, imgs.shape)
    return imgs.reshape(len(x), 64).astype(np.float32)


@functools.cache
def _task_data(task: TaskSpec) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    if task.kind == "tabular":
        import sklearn.datasets

        data = getattr(sklearn.datasets, TABULAR[task.dataset])()
        y = data.target.astype(np.int64)
        split = _stratified_split(y)
        x = data.data.astype(np.float64)
        mean, std = x[split["train"]].mean(0), x[split["train"]].std(0) + 1e-8
        x = ((x - mean) / std).astype(np.float32)
        return {s: (torch.from_numpy(x[i]), torch.from_numpy(y[i])) for s, i in split.items()}
    x, y, split = _digits()
    if task.kind == "digits-image":
        # a coordinate network fits one image: every split is the whole 8x8 grid
        grid = np.linspace(-1.0, 1.0, 8, dtype=np.float32)
        coords = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(64, 2)
        target = x[split["train"][task.image]].reshape(64, 1)  # image i = i-th training image
        pair = (torch.from_numpy(coords), torch.from_numpy(target.copy()))
        return {s: pair for s in SPLITS}
    if task.kind == "digits-shift":
        x = _shifted(task, x)
        return {s: (torch.from_numpy(x[i]), torch.from_numpy(y[i])) for s, i in split.items()}
    remap = np.full(10, -1, dtype=np.int64)
    remap[list(task.classes)] = np.arange(len(task.classes))
    out = {}
    for s, idx in split.items():
        idx = idx[np.isin(y[idx], task.classes)]
        out[s] = (torch.from_numpy(x[idx]), torch.from_numpy(remap[y[idx]]))
    return out


def number_text(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)
