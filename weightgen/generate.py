"""Prompt -> checkpoints on disk -> evaluation: what `weightgen sample` does, as a library call.

`sample_to_folder` samples a generator, writes every finite sample as a self-describing checkpoint
(`sample-000.safetensors`, ...) and the best one (by validation accuracy, so the test figures stay
honest) as a hub-style folder `best/`, then scores the samples with `weightgen.evaluate` against
the zoo the generator was trained on. Every file is written atomically, so an interrupted run leaves
only whole checkpoints.
"""

from __future__ import annotations

import inspect
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from weightgen import atomic
from weightgen.checkpoint import save_model
from weightgen.errors import GeneratorError, WeightgenError
from weightgen.evaluate import evaluate_samples, score_flat
from weightgen.generators.common import GeneratedWeights
from weightgen.sampling import MAX_SAMPLE_FLOATS, check_sampling_args
from weightgen.specs import ArchSpec
from weightgen.zoo.store import ZooStore


@dataclass
class SampleRun:
    samples: GeneratedWeights
    files: list[Path]  # one per finite sample, in sample order
    best: Path | None  # hub-style folder of the best sample by validation accuracy
    report: dict | None  # evaluate_samples' report; None when not evaluated
    notes: list[str] = field(default_factory=list)


def summary(run: SampleRun, prompt: str, generator_dir: str | Path, kind: str, seed: int, out: str | Path) -> dict:
    """What `sample` prints with --json and writes as OUT/report.json (`weightgen report` reads it)."""
    s = run.samples
    result = {"prompt": prompt, "conditioning": s.prompt, "task": s.task.id if s.task else None,
              "arch": s.arch.describe(), "generator": str(generator_dir), "kind": kind, "seed": seed,
              "num_samples": len(s.flat), "num_finite": s.num_finite, "out": str(out),
              "files": [str(f) for f in run.files], "best": str(run.best) if run.best else None,
              "notes": run.notes, "report": run.report}
    atomic.write_text(Path(out) / "report.json", json.dumps(result, indent=1, allow_nan=False))
    return result


def check_writable(out: str | Path) -> Path:
    """Create `out` if needed and prove a file can be written there, before any sampling."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise WeightgenError(f"cannot write to {out}: {e.strerror or e}") from e
    return out


def generator_zoo(generator_dir: str | Path) -> ZooStore | None:
    """The zoo a saved generator was trained on (its train_config.json, else its encoder's), if still there."""
    try:
        cfg = json.loads((Path(generator_dir) / "train_config.json").read_text())
        zoo = cfg.get("zoo") or ""
        if not zoo:
            encoder = cfg.get("encoder") or cfg.get("tokenizer")
            zoo = json.loads((Path(encoder) / "train_config.json").read_text())["zoo"]
        return ZooStore(zoo)
    except (OSError, KeyError, TypeError, json.JSONDecodeError, WeightgenError):
        return None


def draw(pipe, kind: str, prompt: str, arch, num_samples: int, seed: int, steps: int | None,
         guidance: float | None, temperature: float | None) -> GeneratedWeights:
    """Sample a pipeline with the CLI's options (None = the pipeline's default)."""
    check_sampling_args(num_samples, seed, steps, guidance, temperature)
    spec = ArchSpec.parse(arch) if isinstance(arch, str) else arch
    if isinstance(spec, ArchSpec) and num_samples * spec.num_params > MAX_SAMPLE_FLOATS:
        raise GeneratorError(f"{num_samples:,} samples of {spec.describe()} would take over "
                             f"{MAX_SAMPLE_FLOATS * 4 // 2**30} GiB; ask for fewer")
    kwargs = {"num_samples": num_samples, "generator": seed}
    if temperature is not None:
        kwargs["temperature"] = temperature
    accepts = inspect.signature(pipe.__call__).parameters
    if steps is not None:
        if "num_inference_steps" not in accepts:
            raise GeneratorError("--steps applies to diffusion generators only; an AR generator takes one step per "
                                 "token (use --temperature)")
        kwargs["num_inference_steps"] = steps
    if guidance is not None:
        if "guidance_scale" not in accepts:
            raise GeneratorError("--guidance applies to the diffusion generators and the neuron-set AR; this AR "
                                 "generator takes --temperature")
        kwargs["guidance_scale"] = guidance
    return pipe(prompt, **kwargs) if arch is None and "arch" not in accepts else pipe(prompt, arch=arch, **kwargs)


def sample_to_folder(pipe, kind: str, generator_dir: str | Path, prompt: str, out: str | Path, arch=None,
                     num_samples: int = 8, seed: int = 0, steps: int | None = None, guidance: float | None = None,
                     temperature: float | None = None, evaluate: bool = True) -> SampleRun:
    out = check_writable(out)
    samples = draw(pipe, kind, prompt, arch, num_samples, seed, steps, guidance, temperature)
    notes = list(samples.notes)
    meta = {"generator": str(generator_dir), "generator_kind": kind, "seed": seed}
    files = []
    for i, (sd, ok) in enumerate(zip(samples.state_dicts, samples.finite.tolist())):
        if ok:  # non-finite samples are counted in the report, never written as checkpoints
            files.append(save_model(sd, out / f"sample-{i:03d}.safetensors", arch=samples.arch, task=samples.task,
                                    prompt=samples.prompt, sample=i, **meta))
    if samples.num_finite < num_samples:
        notes.append(f"{num_samples - samples.num_finite} of {num_samples} samples have non-finite weights and "
                     "were not written")
    best, report = None, None
    if samples.task is None:
        notes.append("the prompt names no task weightgen knows, so the samples cannot be evaluated; name one, "
                     "e.g. 'classify digits 3, 5 and 8'")
    elif samples.num_finite:
        val = score_flat(samples.arch, samples.flat, samples.task, "val")["acc"].nan_to_num(-1.0)
        i = int(torch.argmax(val))
        best = save_model(samples.state_dicts[i], out / "best", arch=samples.arch, task=samples.task,
                          prompt=samples.prompt, sample=i, **meta).parent
        if evaluate:
            store = generator_zoo(generator_dir)
            if store is None:
                notes.append("the zoo this generator was trained on is not available, so there is no zoo comparison")
            report = evaluate_samples(samples.arch, samples.flat, samples.task, store=store, baselines=False)
            report["best_sample"] = i
    return SampleRun(samples, files, best, report, notes)


def checkpoint_files(paths: list[str | Path]) -> list[Path]:
    """Checkpoint files and hub-style folders named by `paths`, folders of them expanded (sorted)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif (p / "model.safetensors").is_file():
            found.append(p)
        elif p.is_dir():
            inside = sorted(p.glob("*.safetensors")) + sorted(d for d in p.iterdir() if (d / "model.safetensors").is_file())
            if not inside:
                raise WeightgenError(f"{p} holds no checkpoints (*.safetensors files or hub-style folders)")
            found += inside
        else:
            raise WeightgenError(f"no checkpoint at {p}")
    return found


def evaluate_paths(paths: list[str | Path], task: str | None = None, zoo: str | Path | None = None,
                   baselines: bool = False) -> dict:
    """Score checkpoints on their task (`task`: an id or a prompt, else each file's metadata), grouped
    by (task, arch) so each group is one batched evaluation. Returns {"checkpoints": [{path, task,
    arch, acc}], "groups": [evaluate_samples reports]}."""
    from weightgen.checkpoint import load_state_dict
    from weightgen.errors import TaskError
    from weightgen.specs import ArchSpec
    from weightgen.tasks import get_task, parse_prompt

    forced = None
    if task:
        try:
            forced = get_task(task)
        except TaskError:
            forced = parse_prompt(task)
    store = ZooStore(zoo) if zoo else None
    groups: dict[tuple, list[tuple[Path, torch.Tensor]]] = {}
    for path in checkpoint_files(paths):
        sd, meta = load_state_dict(path)
        arch = ArchSpec.from_dict(meta["arch"])
        t = forced
        if t is None:
            tid = (meta.get("task") or {}).get("id")
            if not tid:
                raise WeightgenError(f"{path} names no task in its metadata; pass --task")
            t = get_task(tid)
        groups.setdefault((t, arch), []).append((path, arch.layout().flatten(sd)))
    rows, reports = [], []
    for (t, arch), items in groups.items():
        flat = torch.stack([f for _, f in items])
        report = evaluate_samples(arch, flat, t, store=store, baselines=baselines)
        report["paths"] = [str(p) for p, _ in items]
        reports.append(report)
        rows += [{"path": str(p), "task": t.id, "arch": arch.describe(), "acc": a}
                 for (p, _), a in zip(items, report["generated"]["acc"])]
    return {"checkpoints": rows, "groups": reports}
