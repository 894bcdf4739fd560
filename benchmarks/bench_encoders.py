"""Encoders on held-out models of the default zoo: how much of each network survives encode -> decode.

    python benchmarks/bench_encoders.py [--zoo runs/zoo/digits-mlp]
        [--independent-zoo runs/zoo/digits-mlp-independent] [--vq DIR] [--ae DIR] [--steps N]

Without --vq / --ae, the tokenizer and the autoencoder are trained first with the real training
scripts (train/train_tokenizer.py, train/train_autoencoder.py) and their default configs
(configs/encoder/*-digits.yaml). Everything is then measured on the zoo's held-out models, which no
encoder saw:
- retention = mean over models of acc(decode(encode(w))) / acc(w), test split of each model's task;
- vq_compression = 32 * floats per token / code bits per token;
- ae_retention_noisy: the same with N(0, noise_std^2) added to the latents (what a diffusion model
  that misses a latent slightly would produce);
- lora_retention_by_rank: additive LoRA on the mean of the canonicalised zoo, per rank;
- canon_nn_distance_ratio: mean distance to the nearest other model of the same arch after
  canonicalisation / before it, on an `independent`-init zoo (and, for contrast, the default one).
The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

import torch

from weightgen.config import load_config
from weightgen.encoders.autoencoder import WeightAutoencoder
from weightgen.encoders.lora import lora_retention
from weightgen.encoders.training import AutoencoderConfig, TokenizerConfig
from weightgen.encoders.vqvae import WeightVQVAE
from weightgen.evaluate import evaluate_flat
from weightgen.space.dataset import zoo_weights
from weightgen.space.symmetry import canonicalize
from weightgen.tasks import get_task, task_code
from weightgen.zoo.store import ZooStore

ROOT = Path(__file__).resolve().parents[1]


def run_train_script(name: str, config_cls, config: str, overrides: list[str]) -> str:
    """Train through the script's main(cfg) (weightgen/train/, which train/NAME.py wraps); returns the output folder."""
    module = importlib.import_module(f"weightgen.train.{name.removeprefix('train_')}")
    cfg = load_config(config_cls, ROOT / "configs" / "encoder" / config, overrides)
    module.main(cfg)
    return cfg.out


def retention(data, codec, noise: float = 0.0) -> tuple[float, float, float]:
    """(mean accuracy ratio, mean weight MSE, worst arch's mean ratio) over held-out models."""
    ratios, errors, worst = [], [], 1.0
    for d in data:
        if not len(d.held_out):
            continue
        tasks = [get_task(r["task"]) for r in d.held_out_records]
        # a tokenizer with a task mean codes residuals around it: give it the models' task codes
        extra = [torch.stack([task_code(t) for t in tasks])] if getattr(codec, "task_mean", None) is not None else []
        code = codec.encode(d.held_out, d.arch, *extra)
        if noise:
            code = code + noise * torch.randn_like(code)
        rec = codec.decode(code, d.arch, *extra)
        ratio = evaluate_flat(d.arch, rec, tasks)["acc"] / evaluate_flat(d.arch, d.held_out, tasks)["acc"]
        ratios.append(ratio)
        errors.append(((rec - d.held_out) ** 2).mean(1))
        worst = min(worst, ratio.mean().item())
    return torch.cat(ratios).mean().item(), torch.cat(errors).mean().item(), worst


def nn_distance_ratio(store: ZooStore) -> float:
    """Mean nearest-other-model distance after canonicalisation / before, pooled over archs."""
    before, after = [], []
    for slug, arch in store.archs.items():
        params, _ = store.load_arch(slug, include_held_out=True)
        flat = arch.layout().flatten(params).double()
        aligned, _ = canonicalize(arch, flat)
        for x, out in ((flat, before), (aligned, after)):
            dist = torch.cdist(x, x)
            dist.fill_diagonal_(float("inf"))
            out.append(dist.min(1).values)
    return (torch.cat(after).mean() / torch.cat(before).mean()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="runs/zoo/digits-mlp")
    ap.add_argument("--independent-zoo", default="runs/zoo/digits-mlp-independent")
    ap.add_argument("--vq", help="a trained WeightVQVAE folder (default: train one now)")
    ap.add_argument("--ae", help="a trained WeightAutoencoder folder (default: train one now)")
    ap.add_argument("--steps", type=int, help="override the training steps of both encoders")
    ap.add_argument("--out", default="runs/bench_encoders")
    ap.add_argument("--no-canonical", action="store_true", help="train and measure on weights as trained")
    args = ap.parse_args()
    torch.manual_seed(0)
    store = ZooStore(args.zoo)
    timings = {}

    canonical = not args.no_canonical
    common = [f"zoo={args.zoo}", f"canonical={str(canonical).lower()}"] + ([f"steps={args.steps}"] if args.steps else [])
    t0 = time.perf_counter()
    vq_dir = args.vq or run_train_script("train_tokenizer", TokenizerConfig, "vqvae-digits.yaml",
                                         [*common, f"out={args.out}/vqvae"])
    timings["vq_train_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    ae_dir = args.ae or run_train_script("train_autoencoder", AutoencoderConfig, "autoencoder-digits.yaml",
                                         [*common, f"out={args.out}/autoencoder"])
    timings["ae_train_s"] = round(time.perf_counter() - t0, 1)

    vq = WeightVQVAE.from_pretrained(vq_dir).eval()
    ae = WeightAutoencoder.from_pretrained(ae_dir).eval()
    # with canonicalisation, held-out models are aligned to the references the encoders were
    # trained with (found on training models only) before encoding
    data = zoo_weights(store, canonical=canonical)
    vq_ret, vq_mse, vq_worst = retention(data, vq)
    ae_ret, ae_mse, ae_worst = retention(data, ae)
    ae_noisy, _, _ = retention(data, ae, noise=ae.config.noise_std)

    lora = {}
    for slug in {r["arch"] for r in store.records if r["held_out"]}:
        for rank, value in lora_retention(store, slug).items():
            lora.setdefault(rank, []).append(value)
    lora_by_rank = {str(r): round(sum(v) / len(v), 4) for r, v in lora.items()}

    ratios = {"independent": round(nn_distance_ratio(ZooStore(args.independent_zoo)), 4)}
    ratios["shared"] = round(nn_distance_ratio(store), 4)

    held_out = sum(len(d.held_out) for d in data)
    print(f"held-out models: {held_out} over {len(data)} archs")
    result = {
        "held_out_models": held_out,
        "canonical": canonical,
        "vq_retention": round(vq_ret, 4),
        "vq_retention_worst_arch": round(vq_worst, 4),
        "vq_compression": round(vq.compression, 2),
        "vq_mse": vq_mse,
        "ae_retention": round(ae_ret, 4),
        "ae_retention_worst_arch": round(ae_worst, 4),
        "ae_retention_noisy": round(ae_noisy, 4),
        "ae_mse": ae_mse,
        "lora_retention_by_rank": lora_by_rank,
        "canon_nn_distance_ratio": ratios["independent"],
        "canon_nn_distance_ratio_shared_init": ratios["shared"],
        **timings,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
