"""The probe set of a task: a larger, fixed set of inputs on which two classifiers' behaviour is compared.

A digits test split holds 72-360 images, and a model of zoo accuracy gets 0-3 of them wrong, the same
hard ones as every other model: on the test split a copy of a zoo model and a fresh training run
look alike (benchmarks/RESULTS.md, issue 14). The probe keeps the task's test inputs and labels and
adds many slightly perturbed copies of them, so that good models disagree somewhere:

- digits tasks (subset and shift): each test image, after the task's own transform, is moved by a
  small random affine map (rotation in +-ROTATE degrees, translation in +-SHIFT pixels, bilinear,
  zero outside the image) and gets Gaussian pixel noise of std NOISE;
- tabular tasks: each (standardised) test row gets Gaussian noise of std TABULAR_NOISE per feature.

The clean test inputs come first, then ceil(PROBE_MIN / n) - 1 perturbed rounds, so the probe holds
at least PROBE_MIN examples. Perturbations are drawn from a generator seeded by the task id and the
round, so the probe is the same on every run and machine. Image-fitting tasks have no probe (they
have no wrong answers). Accuracy is still read on the clean test split; the probe only serves
functional novelty (`weightgen.novelty`). The sizes were chosen on the default zoo (benchmarks/RESULTS.md,
bench_probe.py): a probe of this strength makes zoo models err on a few percent of it and separates
fresh trainings from copies.
"""

from __future__ import annotations

import functools
import math
import zlib

import numpy as np
import torch

from weightgen.tasks import TaskSpec

PROBE_MIN = 3000  # examples at least
ROTATE = 10.0  # degrees, uniform in +-ROTATE
SHIFT = 0.75  # pixels, uniform in +-SHIFT along each axis
NOISE = 0.05  # pixel noise std (pixels are in [0, 1])
TABULAR_NOISE = 0.3  # feature noise std (features are standardised)


def _affine(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """images (n, 8, 8) -> each under its own small rotation and translation about the centre."""
    from scipy import ndimage

    out = np.empty_like(images)
    angles = np.deg2rad(rng.uniform(-ROTATE, ROTATE, len(images)))
    shifts = rng.uniform(-SHIFT, SHIFT, (len(images), 2))
    centre = (np.array(images.shape[1:]) - 1) / 2.0
    for i, (a, s) in enumerate(zip(angles, shifts)):
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        # affine_transform maps output coordinates o to input rot @ o + offset
        offset = centre - rot @ (centre + s)
        out[i] = ndimage.affine_transform(images[i], rot, offset=offset, order=1, mode="constant", cval=0.0)
    return out


@functools.cache
def _probe(task: TaskSpec) -> tuple[torch.Tensor, torch.Tensor] | None:
    if task.loss != "ce":
        return None
    x, y = task.split("test")
    x = x.numpy()
    rounds = math.ceil(PROBE_MIN / len(x))
    parts = [x]
    for r in range(1, rounds):
        rng = np.random.default_rng([zlib.crc32(task.id.encode()), r])
        if task.kind == "tabular":
            parts.append(x + rng.normal(0.0, TABULAR_NOISE, x.shape))
            continue
        side = int(round(math.sqrt(x.shape[1])))
        moved = _affine(x.reshape(-1, side, side), rng).reshape(x.shape)
        parts.append(moved + rng.normal(0.0, NOISE, x.shape))
    xs = torch.from_numpy(np.concatenate(parts).astype(np.float32))
    return xs, y.repeat(rounds)


def probe_set(task: TaskSpec) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(X (n, in_dim) float32, y (n,) int64) of the task's probe, n >= PROBE_MIN; None for tasks with
    no wrong answers (image fitting). Cached; the returned tensors must not be modified."""
    return _probe(task)
