"""What the encoder training scripts share: typed configs, token batches, losses, resume.

The scripts (`train/train_tokenizer.py`, `train/train_autoencoder.py`) stay one `main(cfg)` each;
everything reusable lives here.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from weightgen.config import to_dict
from weightgen.encoders.base import TokenCodecMixin
from weightgen.errors import ConfigError, ZooError
from weightgen.metrics import cross_entropy
from weightgen.space.dataset import ArchWeights, zoo_weights
from weightgen.tasks import get_task
from weightgen.zoo.store import ZooStore

KEEP_CHECKPOINTS = 2  # complete checkpoints kept per run (the newest)


@dataclass(frozen=True)
class EncoderTrainConfig:
    zoo: str = "runs/zoo/digits-mlp"  # zoo folder; only its non-held-out models are used
    out: str = "runs/encoders/encoder"  # save_pretrained folder; checkpoints/ inside it for resume
    canonical: bool = True  # align hidden-unit permutations to one reference per arch first
    width: int = 16  # floats per token
    hidden: int = 256  # width of the per-token MLPs
    embed_dim: int = 64  # token-metadata embedding size
    steps: int = 2000  # the schedule spans these; a resume with more steps follows the longer schedule
    batch_tokens: int = 4096  # tokens per step (per process)
    lr: float = 2e-3  # peak learning rate of the warm-up + cosine schedule
    weight_decay: float = 0.0
    save_every: int = 500  # accelerator.save_state interval, in steps
    seed: int = 0


@dataclass(frozen=True)
class TokenizerConfig(EncoderTrainConfig):
    out: str = "runs/encoders/vqvae"
    levels: tuple[int, ...] = (4, 4, 4, 4)  # FSQ levels per latent dim of a group
    groups: int = 4  # latent groups; latent_dim = groups * len(levels)
    num_quantizers: int = 2  # residual stages
    functional_weight: float = 0.0  # > 0 adds the decoded networks' task loss to the weight MSE
    functional_models: int = 16  # whole models per step for the functional loss
    task_mean: bool = False  # code residuals around a task-code mean (weightgen/encoders/vqvae.py)


@dataclass(frozen=True)
class AutoencoderConfig(EncoderTrainConfig):
    out: str = "runs/encoders/autoencoder"
    latent_dim: int = 16
    noise_std: float = 0.05  # decoder trained on latents + N(0, noise_std^2)
    latent_l2: float = 1e-3  # keeps latents near unit scale, so the noise has a fixed meaning


WARMUP = 0.05  # share of a run's steps spent warming the learning rate up


def lr_schedule(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """diffusers' linear warm-up (the first WARMUP of the run) + cosine decay to 0 at `steps`. Its
    state is only the step index, so a run resumed with a larger `steps` follows the new schedule
    instead of running past the end of the old one."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(opt, max(1, int(WARMUP * steps)), steps)


def resume(accelerator, out: str | Path) -> int:
    """Load the newest complete `OUT/checkpoints/step_N` into the accelerator, if any: the step to
    start at. Every train script (encoders and generators) resumes through this one function."""
    ckpt, start = latest_checkpoint(out)
    if ckpt is not None:
        try:
            accelerator.load_state(str(ckpt))
        except RuntimeError as e:  # e.g. a run started before the task code grew (weightgen.tasks.TASK_CODE_DIM)
            what = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), "shapes differ")
            raise ConfigError(f"{ckpt} holds a model of another shape than this config builds ({what}); "
                              f"train into a new out folder, or remove {Path(out) / 'checkpoints'}") from e
        accelerator.print(f"resumed from {ckpt} (step {start})")
    return start


def load_weights(cfg: EncoderTrainConfig) -> list[ArchWeights]:
    store = ZooStore(cfg.zoo)
    data = zoo_weights(store, canonical=cfg.canonical)
    if not any(len(d.train) for d in data):
        raise ZooError(f"zoo {cfg.zoo} has no non-held-out models to train on")
    return data


def sample_tokens(table: dict[str, torch.Tensor], n: int, step: int, seed: int, rank: int,
                  device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """A batch of n random tokens, moved to `device`; seeded by (seed, rank, step) so a resumed run
    draws the same ones (drawn on the host, so every device draws the same ones too)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + rank * 7919 + step)
    idx = torch.randint(len(table["tokens"]), (n,), generator=g)
    return {k: v[idx].to(device) for k, v in table.items()}


def reconstruction_loss(recon: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean squared error over real (non-padding) slots of normalised tokens."""
    mask = batch["mask"].to(recon.dtype)
    return ((recon - batch["tokens"]) ** 2 * mask).sum() / mask.sum().clamp_min(1)


def functional_batch(model: TokenCodecMixin, data: ArchWeights, n: int, step: int, seed: int):
    """Tokens of n whole models of one arch (to ride in the same forward pass as the random
    tokens), on the model's device, and the rows they came from."""
    g = torch.Generator().manual_seed(seed + step)
    rows = torch.randint(len(data.train), (n,), generator=g)
    tokens = model.tokens(data.arch, data.train[rows].to(model.device))
    index, meta = model._index_meta(data.arch, n)
    mask = model.stats.layout(data.arch).mask.to(model.device).repeat(n, 1)
    batch = {"tokens": tokens.reshape(-1, tokens.shape[-1]), "arch": index, "meta": meta, "mask": mask}
    return batch, rows


def functional_loss(model: TokenCodecMixin, data: ArchWeights, rows: torch.Tensor, recon: torch.Tensor, step: int,
                    seed: int) -> torch.Tensor:
    """Task loss of the decoded networks (recon: their reconstructed tokens, flattened) on a
    minibatch of 64 training examples of each one's task; straight-through quantisation keeps the
    path differentiable."""
    arch, n = data.arch, len(rows)
    layout = model.stats.layout(arch)
    flat = model.untokens(arch, recon.reshape(n, layout.num_tokens, -1) * layout.mask.to(recon.device))
    params = arch.layout().unflatten(flat)
    g = torch.Generator().manual_seed(seed + step + 1)
    losses = []
    for i, r in enumerate(rows.tolist()):
        x, y = get_task(data.train_records[r]["task"]).split("train")
        pick = torch.randint(len(x), (64,), generator=g)
        logits = arch.forward_batched({k: v[i : i + 1] for k, v in params.items()}, x[pick][None].to(recon.device))
        losses.append(cross_entropy(logits[0], y[pick].to(recon.device)).mean())
    return torch.stack(losses).mean()


def latest_checkpoint(out: str | Path) -> tuple[Path | None, int]:
    """(folder, step) of the newest `checkpoints/step_N` under `out`, or (None, 0)."""
    folder = Path(out) / "checkpoints"
    steps = [(int(m.group(1)), p) for p in folder.glob("step_*") if (m := re.fullmatch(r"step_(\d+)", p.name))]
    steps = [(s, p) for s, p in steps if (p / "done").is_file()]  # skip a save that was interrupted
    if not steps:
        return None, 0
    step, path = max(steps)
    return path, step


def save_checkpoint(accelerator, out: str | Path, step: int) -> None:
    """accelerator.save_state to OUT/checkpoints/step_N, then a `done` marker (a save cut short by
    an interruption has none, and `latest_checkpoint` skips it)."""
    path = Path(out) / "checkpoints" / f"step_{step}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / "done").write_text(json.dumps({"step": step}))
        # keep the newest KEEP_CHECKPOINTS complete ones: a long run otherwise fills the disk
        # (hundreds of MB per thousand steps), and resume only ever reads the newest
        done = sorted(int(p.name[5:]) for p in path.parent.glob("step_*")
                      if p.name[5:].isdigit() and (p / "done").is_file())
        for old in done[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(path.parent / f"step_{old}", ignore_errors=True)


def save_final(accelerator, model, cfg) -> None:
    """save_pretrained into cfg.out, with the resolved config beside it."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model.save_pretrained(cfg.out)
        (Path(cfg.out) / "train_config.json").write_text(json.dumps(to_dict(cfg), indent=1))
