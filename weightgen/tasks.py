"""Tasks: what a network in the zoo is trained to do, with data splits and plain-English text.

Every task comes from a dataset that ships with scikit-learn (nothing is downloaded):
- `digits-subset-3-5-8`: the 8x8 digits restricted to k >= 2 classes; output size k, labels in the
  sorted order of the classes (1,013 such tasks).
- `digits-rotate-30`, `digits-noise-0.3`, `digits-invert`, `digits-blur-1`: all ten digits, shifted.
- `iris`, `wine`, `breast-cancer`: the bundled tabular sets, features standardised on train.
- `digits-image-17`: fit the 17th training image as a coordinate network (x, y) -> intensity, for
  `inr` archs (only training images, so no test image of a classification task is ever fitted).

Splits are deterministic and stratified: the digits are split once, 60/20/20 by class with a fixed
seed, and every digits task takes its rows from that one split, so a test image of one task is never
a training image of another. `TaskSpec.from_prompt` reads tasks out of plain English.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass

import numpy as np
import torch

from weightgen.errors import TaskError
from weightgen.specs import ArchSpec, find_arch

SPLITS = ("train", "val", "test")
SPLIT_SEED = 0
SHIFTS = {"rotate", "noise", "invert", "blur"}
TABULAR = {"iris": "load_iris", "wine": "load_wine", "breast-cancer": "load_breast_cancer"}
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PLURALS = ["zeros", "ones", "twos", "threes", "fours", "fives", "sixes", "sevens", "eights", "nines"]
DEFAULT_LEVEL = {"noise": 0.2, "blur": 1.0}  # used when a prompt names the shift but no strength


@dataclass(frozen=True)
class TaskSpec:
    """One task; build it with `get_task(id)` or `TaskSpec.from_prompt(text)`."""

    kind: str  # digits-subset | digits-shift | tabular | digits-image
    classes: tuple[int, ...] = ()
    shift: str = ""
    level: float = 0.0
    dataset: str = ""
    image: int = -1

    @property
    def id(self) -> str:
        if self.kind == "digits-subset":
            return "digits-subset-" + "-".join(map(str, self.classes))
        if self.kind == "digits-shift":
            return f"digits-{self.shift}" + ("" if self.shift == "invert" else f"-{_num(self.level)}")
        if self.kind == "digits-image":
            return f"digits-image-{self.image}"
        return self.dataset

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
        return _describe(self)

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


# A task's structure as a fixed-length vector, for generators to condition on beside the prompt
# text: [0, 100) output j is digit c (one-hot at 10 j + c; subset and shift tasks), [100, 104) the
# shift, 104 its level (degrees / 90 for rotations), [105, 108) the tabular set. Image-fitting tasks
# have no structure beyond their text and get zeros. The layout is part of saved generators: append
# new sections, never reorder.
TASK_CODE_DIM = 108
_SHIFT_ORDER = ("rotate", "noise", "invert", "blur")
_TABULAR_ORDER = ("iris", "wine", "breast-cancer")


def task_code(task: TaskSpec) -> torch.Tensor:
    """(TASK_CODE_DIM,) float vector of the task's structure (see above)."""
    code = torch.zeros(TASK_CODE_DIM)
    if task.kind in ("digits-subset", "digits-shift"):
        for j, c in enumerate(task.classes or range(10)):
            code[10 * j + c] = 1.0
    if task.kind == "digits-shift":
        code[100 + _SHIFT_ORDER.index(task.shift)] = 1.0
        code[104] = task.level / 90.0 if task.shift == "rotate" else task.level
    if task.kind == "tabular":
        code[105 + _TABULAR_ORDER.index(task.dataset)] = 1.0
    return code


def get_task(task_id: str) -> TaskSpec:
    """The task with this stable id (see the module docstring for the id forms)."""
    tid = task_id.strip().lower()
    if tid in TABULAR:
        return TaskSpec("tabular", dataset=tid)
    m = re.fullmatch(r"digits-subset((?:-\d)+)", tid)
    if m:
        return subset_task(int(c) for c in m.group(1)[1:].split("-"))
    m = re.fullmatch(r"digits-(rotate|noise|blur)-(-?\d+(?:\.\d+)?)", tid)
    if m:
        return shift_task(m.group(1), float(m.group(2)))
    if tid == "digits-invert":
        return shift_task("invert")
    m = re.fullmatch(r"digits-image-(\d+)", tid)
    if m and int(m.group(1)) < len(_digits()[2]["train"]):
        return TaskSpec("digits-image", image=int(m.group(1)))
    raise TaskError(
        f"unknown task id '{task_id}'; ids look like 'digits-subset-3-5-8', 'digits-rotate-30', "
        "'digits-noise-0.3', 'digits-invert', 'digits-blur-1', 'digits-image-17', 'iris', 'wine' or 'breast-cancer'"
    )


def shift_task(shift: str, level: float = 0.0) -> TaskSpec:
    if shift not in SHIFTS:
        raise TaskError(f"unknown shift '{shift}'; known: {', '.join(sorted(SHIFTS))}")
    if shift in ("noise", "blur") and level <= 0:
        raise TaskError(f"a {shift} level must be positive, got {_num(level)}")
    return TaskSpec("digits-shift", shift=shift, level=0.0 if shift == "invert" else float(level))


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
    if task.shift == "rotate":
        imgs = np.stack([ndimage.rotate(im, task.level, reshape=False, order=1) for im in imgs])
    elif task.shift == "blur":
        imgs = np.stack([ndimage.gaussian_filter(im, task.level) for im in imgs])
    elif task.shift == "invert":
        imgs = 1.0 - imgs
    elif task.shift == "noise":
        # noise is part of the task, not of training: a fixed seed gives every model the same images
        imgs = imgs + np.random.default_rng(SPLIT_SEED).normal(0.0, task.level, imgs.shape)
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


# -- text ----------------------------------------------------------------------------------------


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _describe(task: TaskSpec) -> list[str]:
    if task.kind == "digits-subset":
        nums, words = [str(c) for c in task.classes], [WORDS[c] for c in task.classes]
        if len(task.classes) == 10:
            return ["classify all ten handwritten digits", "recognise every digit from 0 to 9 in 8x8 images",
                    "a classifier for handwritten digits zero through nine"]
        out = [f"classify handwritten digits {_and(nums)}", f"tell apart the digits {_and(words)}",
               f"recognise 8x8 images of the digits {_and(nums)}"]
        if len(task.classes) == 2:
            out.append(f"tell {nums[0]}s apart from {nums[1]}s")
        return out
    if task.kind == "digits-shift":
        lv = _num(task.level)
        return {
            "rotate": [f"classify handwritten digits rotated by {lv} degrees",
                       f"recognise all ten digits in images turned {lv} degrees",
                       f"digit classification on 8x8 images rotated {lv} degrees"],
            "noise": [f"classify handwritten digits with added noise of strength {lv}",
                      f"recognise all ten digits in noisy images (noise {lv})",
                      f"digit classification under Gaussian pixel noise of {lv}"],
            "invert": ["classify handwritten digits with inverted colours",
                       "recognise all ten digits in colour-inverted images",
                       "digit classification on negative images"],
            "blur": [f"classify blurred handwritten digits (blur {lv})",
                     f"recognise all ten digits in images blurred with sigma {lv}",
                     f"digit classification on blurry 8x8 images, blur {lv}"],
        }[task.shift]
    if task.kind == "digits-image":
        i = task.image
        return [f"represent handwritten digit image {i} as a coordinate network",
                f"fit digits image {i} with an implicit neural representation",
                f"an INR that draws the 8x8 digit image number {i}"]
    return {
        "iris": ["classify iris flowers into their three species",
                 "tell setosa, versicolor and virginica irises apart",
                 "predict the iris species from sepal and petal measurements"],
        "wine": ["classify wines into their three cultivars",
                 "tell the three wine cultivars apart from their chemical analysis",
                 "predict a wine's grape cultivar from 13 chemical measurements"],
        "breast-cancer": ["diagnose breast tumours as malignant or benign",
                          "classify breast cancer biopsies from cell-nucleus features",
                          "tell malignant from benign breast masses"],
    }[task.dataset]


# Words a prompt may contain that carry no task information of their own.
_FILLER = set(
    "a an the and or of on in to with from by for as at is are be that which into under using "
    "classify classifier classification recognise recognize recognition tell apart distinguish "
    "discriminate between vs versus digit digits handwritten images image pictures 8x8 class classes "
    "model network net task please make train generate weights degrees degree deg strength level sigma "
    "all ten every only numbers number s".split()
)


def parse_prompt(text: str) -> TaskSpec:
    """Read a task out of plain English; raises TaskError naming what it could not understand."""
    if not text.strip():
        raise TaskError("the prompt is empty; describe a task such as 'digits 3, 5 and 8' or 'iris'")
    _, rest = find_arch(text)  # "... with an MLP 64-32-3": the sizes are not digit classes
    s = " " + rest.lower().replace("°", " degrees ").replace("’", "'") + " "
    s = re.sub(r"\b8\s*[x×]\s*8\b", " ", s)  # "8x8 images" is the image size, not two 8s
    if re.search(r"\biris", s):
        return get_task("iris")
    if re.search(r"\bwines?\b|cultivar", s):
        return get_task("wine")
    if re.search(r"breast|tumou?r|malignan|benign", s):
        return get_task("breast-cancer")
    m = re.search(r"\b(?:image|picture)\s*(?:number|#|no\.?)?\s*(\d+)", s)
    if m and re.search(r"\binr\b|implicit|coordinate|represent|fit\b|draw", s):
        return get_task(f"digits-image-{m.group(1)}")

    shift, level = None, None
    m = re.search(r"\b(?:rotat|turn)\w*(?:\s+(?:by|of|through))?\s+(-?\d+(?:\.\d+)?)"
                  r"|(-?\d+(?:\.\d+)?)\s*degrees?\s+(?:rotat|turn)", s)
    if m:
        shift, level, s = "rotate", float(m.group(1) or m.group(2)), s[: m.start()] + " " + s[m.end():]
    elif re.search(r"\brotat", s):
        raise TaskError(f"'{text.strip()}' asks for rotated digits but gives no angle (say e.g. 'rotated by 30 degrees')")
    for name, pattern in (("noise", r"nois\w*"), ("blur", r"blur\w*")):
        # the strength may follow within a few words: "blur 1", "noise of strength 0.3", "blurred ... (blur 0.5)"
        m = re.search(rf"\b{pattern}(?:[^0-9]{{0,40}}?(\d+(?:\.\d+)?))?", s)
        if m and shift is None:
            shift, level = name, float(m.group(1)) if m.group(1) else DEFAULT_LEVEL[name]
            s = s[: m.start()] + " " + s[m.end():]
    if shift is None and re.search(r"\binvert\w*|\bnegative|\binverse", s):
        shift, level = "invert", 0.0

    classes = _classes(s)
    if shift is not None:
        if classes and len(classes) < 10:
            raise TaskError(f"'{text.strip()}' mixes a shift ({shift}) with a class subset; shift tasks use all ten digits")
        return shift_task(shift, level)
    if len(classes) >= 2:
        return subset_task(classes)
    if len(classes) == 1:
        raise TaskError(f"'{text.strip()}' names only the digit {classes[0]}; a classifier needs at least two classes")
    if re.search(r"\bdigits?\b", s):
        return subset_task(range(10))
    unknown = [w for w in re.findall(r"[a-z0-9']+", s) if w not in _FILLER and w not in WORDS]
    what = ", ".join(f"'{w}'" for w in unknown) or "nothing"
    raise TaskError(
        f"no known task in '{text.strip()}': could not understand {what}; try 'digits 3, 5 and 8', "
        "'tell 4s apart from 9s', 'digits rotated by 30 degrees', 'iris', 'wine' or 'breast cancer'"
    )


def _classes(s: str) -> list[int]:
    """Digit classes named in a prompt: numerals, words, plurals ('4s', 'sixes') and ranges ('0 to 4')."""
    if re.search(r"\ball\s+(?:ten\s+|10\s+)?digits|\bevery digit|\b0\s*(?:-|to|through)\s*9\b", s):
        return list(range(10))
    found = []
    digit = r"(\d|" + "|".join(WORDS) + r")"
    ranged = rf"\b{digit}\s*(?:to|through|-)\s*{digit}\b"
    for a, b in re.findall(ranged, s):
        lo, hi = (int(v) if v.isdigit() else WORDS.index(v) for v in (a, b))
        found += range(lo, hi + 1)
    s = re.sub(ranged, " ", s)
    for tok in re.findall(r"[a-z]+|\d+(?:\.\d+)?(?:'?s)?", s):
        num = tok.rstrip("s").rstrip("'")
        if num.isdigit():
            if int(num) > 9:
                raise TaskError(f"{num} is not a digit class; digit classes are 0-9")
            found.append(int(num))
        elif tok in WORDS:
            found.append(WORDS.index(tok))
        elif tok in PLURALS:
            found.append(PLURALS.index(tok))
    return sorted(set(found))
