"""Zoo weights prepared for encoders: per arch, flat weights, optionally canonicalised.

`zoo_weights(store)` reads every arch of a zoo (memory-mapped shards), splits models into those a
learner may train on and the held-out ones, and aligns all of them to one reference per arch
(found on the training models only) when `canonical` is set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from weightgen.errors import ZooError
from weightgen.space.symmetry import canonicalize
from weightgen.specs import ArchSpec
from weightgen.zoo.store import ZooStore


@dataclass
class ArchWeights:
    arch: ArchSpec
    train: torch.Tensor  # (N, P) weights of non-held-out models
    train_records: list[dict]
    held_out: torch.Tensor  # (M, P) weights of held-out models (never used to fit anything)
    held_out_records: list[dict]
    reference: torch.Tensor | None  # (P,) canonicalisation reference, if canonical


def zoo_weights(store: ZooStore, canonical: bool = True, archs: list[str] | None = None) -> list[ArchWeights]:
    store.check_complete()
    out = []
    for slug in archs or list(store.archs):
        if slug not in store.archs:
            raise ZooError(f"zoo {store.root} has no arch {slug}; it has {', '.join(store.archs)}")
        arch = store.archs[slug]
        params, records = store.load_arch(slug, include_held_out=True)
        flat = arch.layout().flatten(params).float()
        held = torch.tensor([r["held_out"] for r in records], dtype=torch.bool)
        train, test = flat[~held], flat[held]
        reference = None
        if canonical and len(train):
            train, reference = canonicalize(arch, train)
            if len(test):
                test, _ = canonicalize(arch, test, reference)
        out.append(ArchWeights(arch, train, [r for r, h in zip(records, held) if not h], test,
                               [r for r, h in zip(records, held) if h], reference))
    return out
