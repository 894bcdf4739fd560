"""Training LoRA generators through the task loss: factor tokens, the predicted clean sample, the loss."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from diffusers import DDPMScheduler

from weightgen.encoders.adapter import canonical
from weightgen.encoders.adapter_factors import AdapterFactorTokens
from weightgen.errors import CheckpointError, ConfigError
from weightgen.generators.diffusion import clean_estimate
from weightgen.generators.task_loss import AdapterTaskLoss
from weightgen.tasks import get_task
from weightgen.zoo.lora_build import zoo_base

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def zoo_factors(store) -> dict[str, torch.Tensor]:
    ids = range(len(store.records))
    return {n: torch.stack([store.state_dict(i)[n] for i in ids]) for n in store.state_dict(0)}


def test_factor_tokens_round_trip_the_canonical_factors_and_keep_gradients(debug_lora_zoo):
    codec = AdapterFactorTokens(debug_lora_zoo.manifest["lora"])
    f = zoo_factors(debug_lora_zoo)
    n = len(debug_lora_zoo.records)
    tokens = codec.encode(f)
    assert tokens.shape == (n, codec.num_tokens, codec.token_dim) == (n, 5 * 2, 32 + 32)  # 5 modules, rank 2
    assert not tokens[:, ~codec.used].any()  # padding is zero
    back = codec.decode(tokens)
    for m in codec.targets:  # decoding reads the canonical factors back exactly, so the product is kept
        a, b = f[f"{m}.lora_A"], f[f"{m}.lora_B"]
        ca, cb = canonical(a, b)
        assert torch.allclose(back[f"{m}.lora_A"], ca, atol=1e-5) and torch.allclose(back[f"{m}.lora_B"], cb, atol=1e-5)
        assert torch.allclose(back[f"{m}.lora_B"] @ back[f"{m}.lora_A"], b @ a, atol=1e-5)
    # no SVD on the way back: any tokens decode, and gradients reach them
    free = torch.randn(2, codec.num_tokens, codec.token_dim, requires_grad=True)
    out = codec.decode(free)
    sum(v.sum() for v in out.values()).backward()
    assert torch.equal(free.grad != 0, codec.used.expand(2, -1, -1))
    with pytest.raises(CheckpointError, match="factor tokens"):
        codec.decode(tokens[:, 1:])


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon", "sample"])
def test_clean_estimate_inverts_the_training_target_at_any_rank(prediction_type):
    sched = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 3, 4, generator=g), torch.randn(6, 3, 4, generator=g)
    t = torch.tensor([0, 10, 30, 50, 70, 90])
    noisy = sched.add_noise(x0, noise, t)
    target = {"epsilon": noise, "sample": x0}.get(prediction_type)
    target = sched.get_velocity(x0, noise, t) if target is None else target
    assert torch.allclose(clean_estimate(sched.alphas_cumprod, noisy, target, t, prediction_type), x0, atol=1e-4)
    wrong = clean_estimate(sched.alphas_cumprod, noisy, target + 0.5, t, prediction_type)
    assert not torch.allclose(wrong, x0, atol=1e-2)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon", "sample"])
def test_min_snr_weights_fade_the_denoising_loss_out_towards_pure_noise(prediction_type):
    from weightgen.train.diffusion import DiffusionConfig, denoising_weights

    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)
    t = torch.tensor([0, 300, 500, 700, 900, 999])
    off = denoising_weights(sched, t, DiffusionConfig(prediction_type=prediction_type))
    assert torch.equal(off, torch.ones(6))
    w = denoising_weights(sched, t, DiffusionConfig(prediction_type=prediction_type, snr_gamma=5.0))
    assert w.isfinite().all() and (w >= 0).all()
    snr = (sched.alphas_cumprod / (1 - sched.alphas_cumprod))[t]
    # the same weighting expressed on the clean sample: min(SNR, gamma), whatever the model predicts
    per_x0 = {"v_prediction": snr + 1, "epsilon": snr, "sample": torch.ones(6)}[prediction_type]
    assert torch.allclose(w * per_x0, snr.clamp(max=5.0), rtol=1e-4)
    on_x0 = w * per_x0
    assert on_x0[-1] < 1e-6 < on_x0[2]  # at t = T the task loss alone decides


def test_task_loss_scores_adapters_on_their_own_task_and_trains_them(debug_lora_zoo):
    lora = debug_lora_zoo.manifest["lora"]
    tasks = sorted({r["task"] for r in debug_lora_zoo.records})
    loss_fn = AdapterTaskLoss(zoo_base(debug_lora_zoo), lora, tasks, examples=16)
    f = zoo_factors(debug_lora_zoo)
    ids = [r["task"] for r in debug_lora_zoo.records]
    trained = loss_fn(f, ids, torch.Generator().manual_seed(0)).mean()
    zero = {n: torch.zeros_like(v) for n, v in f.items()}  # B = 0: the base itself
    base = loss_fn(zero, ids, torch.Generator().manual_seed(0)).mean()
    assert trained < base  # the zoo's adapters fit their own tasks better than the base does
    # a few steps on the loss move zero-initialised B factors towards the task
    params = {n: (v.clone() if n.endswith("lora_A") else torch.zeros_like(v)).requires_grad_(True) for n, v in f.items()}
    opt = torch.optim.Adam(params.values(), lr=1e-2)
    for step in range(30):
        loss = loss_fn(params, ids, torch.Generator().manual_seed(step)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_fn(params, ids, torch.Generator().manual_seed(0)).mean() < base
    with pytest.raises(ValueError):
        loss_fn(f, [get_task("digits-rotate-7").id] * len(ids), torch.Generator())  # not one of its tasks


def test_diffusion_trains_through_the_task_loss_and_samples(debug_lora_zoo, train_script, repo_root, tmp_path):
    from weightgen.config import load_config
    from weightgen.home import load_generator

    script = train_script("diffusion")
    cfg = repo_root / "configs" / "generator" / "debug-lora-diffusion.yaml"
    base = [f"zoo={debug_lora_zoo.root}", f"out={tmp_path / 'g'}", "latent_components=0", "steps=2"]
    script.main(load_config(script.DiffusionConfig, cfg, [*base, "adapter_tokens=factors", "task_loss=1.0", "task_examples=8",
                                                          "snr_gamma=5", "code_hidden=8"]))  # as the default config
    pipe, _, _ = load_generator(tmp_path / "g", None)
    assert type(pipe.encoder).__name__ == "AdapterFactorTokens"
    assert isinstance(pipe.denoiser.code_proj, torch.nn.Sequential)
    # a fresh process (no training module imported) loads it too: diffusers finds the codec's module
    code = f"from weightgen.home import load_generator; print(type(load_generator({str(tmp_path / 'g')!r}, None)[0].encoder).__name__)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "AdapterFactorTokens", run.stderr[-2000:]
    out = pipe("inverted digits", num_samples=2, num_inference_steps=2, generator=0)
    assert out.num_finite == 2 and out.factors["classifier.lora_B"].shape == (2, 10, 2)
    # by default one step from t = T: the denoiser's own prediction from noise
    assert pipe.default_sampling() == (1, 0.7)
    pipe.scheduler.set_timesteps(1)
    assert pipe.scheduler.timesteps.tolist() == [pipe.scheduler.config.num_train_timesteps - 1]
    default, explicit = pipe("inverted digits", num_samples=2, generator=0), pipe(
        "inverted digits", num_samples=2, num_inference_steps=1, temperature=0.7, generator=0)
    assert all(torch.equal(default.factors[n], explicit.factors[n]) for n in default.factors)
    assert not torch.equal(default.factors["classifier.lora_B"], out.factors["classifier.lora_B"])
    # task_loss on delta tokens would score an adapter other than the one sampling writes
    with pytest.raises(ConfigError, match="adapter_tokens: factors"):
        script.main(load_config(script.DiffusionConfig, cfg, [*base, f"out={tmp_path / 'bad'}", "task_loss=1.0"]))
    assert not (tmp_path / "bad").exists()


def test_network_task_loss_scores_zoo_networks_on_their_own_tasks(debug_zoo):
    from weightgen.generators.task_loss import NetworkTaskLoss

    slug, arch = next((s, a) for s, a in debug_zoo.archs.items() if a.family == "mlp")
    sd, records = debug_zoo.load_arch(slug)
    flat = arch.layout().flatten(sd)
    ids = [r["task"] for r in records]
    loss_fn = NetworkTaskLoss(ids, examples=64)
    trained = loss_fn(arch, flat, ids, torch.Generator().manual_seed(0))
    assert trained.shape == (len(ids),)
    trained = trained.mean()
    shuffled = loss_fn(arch, flat, ids[1:] + ids[:1], torch.Generator().manual_seed(0)).mean()  # each net on another task
    assert torch.isfinite(trained) and trained < shuffled
    weights = flat.clone().requires_grad_(True)
    loss_fn(arch, weights, ids, torch.Generator().manual_seed(1)).mean().backward()
    assert weights.grad.abs().sum() > 0

