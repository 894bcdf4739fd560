"""Prompt -> PEFT adapters on disk -> evaluation: what `weightgen sample` does with a LoRA generator.

Every finite sample becomes a PEFT adapter folder `OUT/sample-000/` (adapter_config.json,
adapter_model.safetensors, weightgen_adapter.json), loadable with `PeftModel.from_pretrained(base,
folder)` on the base saved in the generator folder (`GEN/base`); the best sample by validation
accuracy is also written as `OUT/best/`. The samples are then scored against the five references
of `weightgen.evaluate_lora` on the zoo the generator was trained on. The multitask LoRA is trained
once per generator (about a minute and a half on 2 CPU cores) and kept in `GEN/references/multitask`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from weightgen import atomic
from weightgen.evaluate_lora import LoRAZoo, evaluate_adapter_samples, multitask_adapter
from weightgen.generate import check_writable, draw, generator_zoo
from weightgen.zoo.lora_adapter import read_adapter, save_adapter


def multitask_reference(zoo: LoRAZoo, generator_dir: Path, notes: list[str]) -> dict[str, torch.Tensor]:
    """The multitask LoRA of the generator's zoo, trained on first use and kept beside the generator."""
    folder = generator_dir / "references" / "multitask"
    if (folder / "weightgen_adapter.json").is_file():
        factors, _ = read_adapter(folder)
        return {n: f[None] for n, f in factors.items()}
    notes.append("trained the multitask LoRA reference (all seen tasks) once; it is kept in references/multitask")
    factors = multitask_adapter(zoo)
    save_adapter(folder, {n: f[0] for n, f in factors.items()}, zoo.store.manifest["lora"], zoo.store.root / "base",
                 task="multitask: " + ", ".join(zoo.seen_tasks()), generator="multitask LoRA reference")
    return factors


def sample_adapters_to_folder(pipe, generator_dir: str | Path, prompt: str, out: str | Path, num_samples: int = 8,
                              seed: int = 0, steps: int | None = None, guidance: float | None = None,
                              temperature: float | None = None, evaluate: bool = True) -> dict:
    """Sample, write, evaluate; returns what `sample --json` prints (also written as OUT/report.json)."""
    out, generator_dir = check_writable(out), Path(generator_dir)
    pipe.check_base()
    samples = draw(pipe, "diffusion", prompt, None, num_samples, seed, steps, guidance, temperature)
    store = generator_zoo(generator_dir)
    zoo = LoRAZoo.load(store.root) if store is not None else None
    val = (zoo.accuracy({n: f.nan_to_num() for n, f in samples.factors.items()}, samples.task, "val")
           if zoo is not None else torch.zeros(num_samples)).masked_fill(~samples.finite, -1.0)
    meta = {"task": samples.task.id, "prompt": samples.prompt, "generator": str(generator_dir), "seed": seed}
    files, notes, report, best = [], [], None, None
    for i in range(num_samples):
        if samples.finite[i]:
            files.append(save_adapter(out / f"sample-{i:03d}", samples.adapter(i), samples.lora,
                                      generator_dir / "base", sample=i, **meta))
    if samples.num_finite < num_samples:
        notes.append(f"{num_samples - samples.num_finite} of {num_samples} samples have non-finite factors and were not written")
    if files:
        i = int(torch.argmax(val))
        best = save_adapter(out / "best", samples.adapter(i), samples.lora, generator_dir / "base", sample=i, **meta)
    if zoo is None:
        notes.append("the zoo this generator was trained on is not available, so the samples are not evaluated")
    elif evaluate:
        multi = multitask_reference(zoo, generator_dir, notes)
        report = evaluate_adapter_samples(zoo, samples.factors, samples.task, multi, seed)
        report["best_sample"] = int(torch.argmax(val))
    result = {"prompt": prompt, "conditioning": samples.prompt, "task": samples.task.id, "arch": "LoRA adapter",
              "generator": str(generator_dir), "kind": "lora", "seed": seed, "num_samples": num_samples,
              "num_finite": samples.num_finite, "out": str(out), "files": [str(f) for f in files],
              "best": str(best) if best else None, "base": str(generator_dir / "base"), "notes": notes, "report": report}
    atomic.write_text(out / "report.json", json.dumps(result, indent=1, allow_nan=False))
    return result
