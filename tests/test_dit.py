"""WeightDiT, the diffusion denoiser: shapes, masks, conditioning, gradients, save/load."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from weightgen.generators.dit import WeightDiT

B, T, L, D = 3, 10, 5, 16


@pytest.fixture
def model():
    torch.manual_seed(0)
    return WeightDiT(latent_dim=D, n_archs=3, n_layers=4, n_positions=64, num_layers=2,
                     num_attention_heads=2, attention_head_dim=16).eval()


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(1)
    meta = torch.stack([torch.randint(0, 4, (B, T), generator=g), torch.randint(0, 2, (B, T), generator=g),
                        torch.randint(0, 64, (B, T), generator=g)], -1)
    return dict(latents=torch.randn(B, T, D, generator=g), timestep=torch.tensor([0, 500, 999]),
                text_tokens=torch.randn(B, L, 384, generator=g), text_mask=torch.ones(B, L, dtype=torch.bool),
                arch_index=torch.tensor([0, 1, 2]), meta=meta)


def test_output_has_the_latents_shape(model, inputs):
    assert model(**inputs).shape == (B, T, D)


def test_padded_network_tokens_do_not_change_real_ones(model, inputs):
    out = model(**inputs)
    padded = dict(inputs, latents=torch.cat([inputs["latents"], 100 * torch.randn(B, 4, D)], 1),
                  meta=torch.cat([inputs["meta"], torch.zeros(B, 4, 3, dtype=torch.long)], 1),
                  token_mask=torch.cat([torch.ones(B, T), torch.zeros(B, 4)], 1).bool())
    assert torch.allclose(model(**padded)[:, :T], out, atol=1e-5)


def test_padded_text_tokens_are_ignored(model, inputs):
    out = model(**inputs)
    padded = dict(inputs, text_tokens=torch.cat([inputs["text_tokens"], 100 * torch.randn(B, 3, 384)], 1),
                  text_mask=torch.cat([inputs["text_mask"], torch.zeros(B, 3, dtype=torch.bool)], 1))
    assert torch.allclose(model(**padded), out, atol=1e-5)


def test_prompt_timestep_and_arch_all_condition_the_output(model, inputs):
    out = model(**inputs)
    for key, other in [("text_tokens", torch.randn(B, L, 384)), ("timestep", inputs["timestep"].flip(0)),
                       ("arch_index", torch.tensor([2, 0, 1]))]:
        assert (model(**dict(inputs, **{key: other})) - out).abs().max() > 1e-3, key


def test_null_prompt_runs_and_trains(model, inputs):
    tokens, mask = model.null_prompt(B)
    model.train()
    model(**dict(inputs, text_tokens=tokens, text_mask=mask)).pow(2).mean().backward()
    assert model.null_text.grad is not None and model.null_text.grad.abs().sum() > 0


def test_every_parameter_gets_a_gradient(model, inputs):
    model.train()
    model(**inputs).pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if n != "null_text" and (p.grad is None or not p.grad.any())]
    assert not missing


def test_save_pretrained_round_trip(model, inputs, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = WeightDiT.from_pretrained(tmp_path).eval()
    def init_args(m):
        return {k: v for k, v in m.config.items() if not k.startswith("_")}  # not diffusers' bookkeeping

    assert init_args(loaded) == init_args(model)
    assert torch.equal(loaded(**inputs), model(**inputs))


def _coded_model(code_dim: int = 12, max_tokens: int = T, max_seen_tasks: int = 0):
    torch.manual_seed(0)
    return WeightDiT(latent_dim=D, n_archs=3, n_layers=4, n_positions=64, num_layers=1, num_attention_heads=2,
                     attention_head_dim=8, max_tokens=max_tokens, task_code_dim=code_dim,
                     max_seen_tasks=max_seen_tasks).eval()


def _tasks_with_own_offsets(seed_noise: float, per_task: int = 4):
    """20 tasks whose latent means are a linear map of the code plus a task-specific part no linear map
    of the code explains, each with `per_task` models spread by `seed_noise`."""
    g = torch.Generator().manual_seed(5)
    tasks = (torch.rand(20, 12, generator=g) < 0.3).float()
    tasks[:, 0] = torch.arange(20) % 2  # make the 20 codes distinct
    tasks[:, 1:6] = torch.eye(5).repeat(4, 1)
    weight = torch.randn(12, T, D, generator=g)
    own = torch.randn(20, T, D, generator=g)
    means = torch.einsum("nc,ctd->ntd", tasks, weight) + own
    codes = tasks.repeat_interleave(per_task, 0)
    latents = means.repeat_interleave(per_task, 0) + seed_noise * torch.randn(20 * per_task, T, D, generator=g)
    return tasks, means, codes, latents


def test_conditional_mean_recovers_a_linear_map_of_the_task_code():
    model, g = _coded_model(), torch.Generator().manual_seed(3)
    codes = (torch.rand(200, 12, generator=g) < 0.3).float()
    weight, bias = torch.randn(12, T - 2, D, generator=g), torch.randn(T - 2, D, generator=g)
    latents = torch.einsum("nc,ctd->ntd", codes, weight) + bias + 0.01 * torch.randn(200, T - 2, D, generator=g)
    model.set_latent_stats(1, latents, codes, ridge=1e-3)
    fresh = (torch.rand(5, 12, generator=g) < 0.3).float()  # codes it never saw
    expected = torch.einsum("nc,ctd->ntd", fresh, weight) + bias
    assert torch.allclose(model.conditional_mean(1, fresh, T - 2), expected, atol=0.05)
    # what is left is the noise: residual stds near 0.01, and the round trip is exact
    assert model.latent_std[1, : T - 2].median() < 0.02
    x = model.standardize(latents, 1, codes)
    assert torch.allclose(model.destandardize(x, 1, codes), latents, atol=1e-4)
    # the other arch is untouched, and no code means the arch's mean
    assert torch.equal(model.latent_mean[0], torch.zeros(T, D))
    assert torch.allclose(model.conditional_mean(1, None, T - 2)[0], latents.mean(0))


def test_seen_tasks_keep_their_own_mean_and_unseen_ones_get_the_linear_mean():
    tasks, means, codes, latents = _tasks_with_own_offsets(seed_noise=0.05)
    linear, model = _coded_model(), _coded_model(max_seen_tasks=32)
    linear.set_latent_stats(0, latents, codes, ridge=1.0)
    model.set_latent_stats(0, latents, codes, ridge=1.0)
    own_err = (model.conditional_mean(0, tasks, T) - means).abs().mean()
    linear_err = (linear.conditional_mean(0, tasks, T) - means).abs().mean()
    # seeds agree within a task, so each seen task keeps (nearly) its own mean; the linear map cannot
    assert own_err < 0.05 and linear_err > 0.3
    # the residual std is then the seed spread, not the spread between tasks
    assert model.latent_std[0].median() < 0.1 < linear.latent_std[0].median()
    unseen = tasks[:3].clone()
    unseen[:, 6:] = 1 - unseen[:, 6:]
    assert torch.equal(model.conditional_mean(0, unseen, T), linear.conditional_mean(0, unseen, T))
    x = model.standardize(latents, 0, codes)
    assert torch.allclose(model.destandardize(x, 0, codes), latents, atol=1e-4)


def test_task_offsets_shrink_when_seeds_disagree():
    tasks, means, codes, latents = _tasks_with_own_offsets(seed_noise=5.0, per_task=2)
    linear, model = _coded_model(), _coded_model(max_seen_tasks=32)
    linear.set_latent_stats(0, latents, codes, ridge=1.0)
    model.set_latent_stats(0, latents, codes, ridge=1.0)
    offset = model.conditional_mean(0, tasks, T) - linear.conditional_mean(0, tasks, T)
    grouped = latents.view(20, 2, T, D).mean(1) - linear.conditional_mean(0, tasks, T)
    # two noisy models per task: the offset is a fraction of the raw task mean, not all of it
    ratio = (offset.norm() / grouped.norm()).item()
    assert 0.0 <= ratio < 0.5
    with pytest.raises(ValueError, match="seen tasks"):
        _coded_model(max_seen_tasks=8).set_latent_stats(0, latents, codes)


def test_code_conditioned_denoiser_needs_codes_and_reads_them(inputs):
    model = _coded_model()
    with pytest.raises(ValueError, match="task codes"):
        model.set_latent_stats(0, torch.randn(4, T, D))
    code = torch.zeros(B, 12)
    other = code.clone()
    other[:, 3] = 1
    out = model(**inputs, task_code=code)
    assert (model(**inputs, task_code=other) - out).abs().max() > 1e-3
    model.train()
    model(**inputs, task_code=other).pow(2).mean().backward()
    assert model.code_proj.weight.grad.abs().sum() > 0


def test_code_conditioned_round_trip(tmp_path):
    model, g = _coded_model(), torch.Generator().manual_seed(4)
    codes = (torch.rand(30, 12, generator=g) < 0.3).float()
    model.set_latent_stats(0, torch.randn(30, T, D, generator=g), codes)
    model.save_pretrained(tmp_path)
    loaded = WeightDiT.from_pretrained(tmp_path)
    for name, buf in model.task_mean.named_buffers():  # exact; unused seen_codes rows are NaN
        torch.testing.assert_close(getattr(loaded.task_mean, name), buf, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(loaded.conditional_mean(0, codes, T), model.conditional_mean(0, codes, T))


def test_task_offsets_round_trip(tmp_path):
    tasks, _, codes, latents = _tasks_with_own_offsets(seed_noise=0.05)
    model = _coded_model(max_seen_tasks=32)
    model.set_latent_stats(2, latents, codes)
    model.save_pretrained(tmp_path)
    loaded = WeightDiT.from_pretrained(tmp_path)
    assert torch.equal(loaded.task_mean.seen_offset, model.task_mean.seen_offset)
    assert torch.equal(loaded.conditional_mean(2, tasks, T), model.conditional_mean(2, tasks, T))
    assert not torch.equal(loaded.conditional_mean(2, tasks, T), loaded.conditional_mean(0, tasks, T))


def _as_saved_before_task_mean(folder) -> None:
    """Rewrite a saved denoiser's weights the way generators were saved before `TaskMean`: its
    buffers at the top level under their old names, and no x mean (it was `latent_mean`)."""
    path = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    old = {"task_mean.weight": "mean_weight", "task_mean.code_mean": "code_mean",
           "task_mean.seen_codes": "seen_codes", "task_mean.seen_offset": "seen_offset"}
    del state["task_mean.x_mean"]
    for new, name in old.items():
        tensor = state.pop(new)
        if tensor.numel():  # a denoiser without offsets had no such buffers
            state[name] = tensor
    save_file(state, path)


@pytest.mark.parametrize("max_seen_tasks", [0, 32])
def test_a_denoiser_saved_before_task_mean_loads_with_the_same_mean(tmp_path, max_seen_tasks):
    tasks, _, codes, latents = _tasks_with_own_offsets(seed_noise=0.05)
    model = _coded_model(max_seen_tasks=max_seen_tasks)
    model.set_latent_stats(1, latents, codes)
    # the old layout's x mean was latent_mean (float32 mean, not the ridge's float64 one)
    model.task_mean.x_mean.copy_(model.latent_mean.flatten(1))
    model.save_pretrained(tmp_path)
    _as_saved_before_task_mean(tmp_path)
    assert "task_mean.weight" not in load_file(tmp_path / "diffusion_pytorch_model.safetensors")
    loaded = WeightDiT.from_pretrained(tmp_path)
    assert torch.equal(loaded.conditional_mean(1, tasks, T), model.conditional_mean(1, tasks, T))
    assert torch.equal(loaded.conditional_mean(1, None, T), model.conditional_mean(1, None, T))


def test_a_training_state_saved_before_task_mean_loads_through_load_state_dict(tmp_path):
    # accelerate's load_state restores the model with load_state_dict, which diffusers' hook misses
    tasks, _, codes, latents = _tasks_with_own_offsets(seed_noise=0.05)
    model = _coded_model(max_seen_tasks=32)
    model.set_latent_stats(0, latents, codes)
    model.task_mean.x_mean.copy_(model.latent_mean.flatten(1))
    model.save_pretrained(tmp_path)
    _as_saved_before_task_mean(tmp_path)
    fresh = _coded_model(max_seen_tasks=32)
    fresh.load_state_dict(load_file(tmp_path / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(fresh.conditional_mean(0, tasks, T), model.conditional_mean(0, tasks, T))


def test_code_mlp_reads_the_code_non_linearly_and_round_trips(inputs, tmp_path):
    torch.manual_seed(0)
    model = WeightDiT(latent_dim=D, n_archs=3, n_layers=4, n_positions=64, num_layers=1, num_attention_heads=2,
                      attention_head_dim=8, max_tokens=T, task_code_dim=12, conditional_mean=False,
                      code_hidden=16).eval()
    assert isinstance(model.code_proj, torch.nn.Sequential) and model.task_mean is None
    zero, one, two = torch.zeros(B, 12), torch.zeros(B, 12), torch.zeros(B, 12)
    one[:, 2], two[:, 2] = 1.0, 2.0
    embed = [model.code_proj(c) for c in (zero, one, two)]
    assert not torch.allclose(embed[2] - embed[1], embed[1] - embed[0], atol=1e-4)  # not one linear map
    out = model(**inputs, task_code=one)
    assert (model(**inputs, task_code=two) - out).abs().max() > 1e-3
    model.save_pretrained(tmp_path)
    assert torch.equal(WeightDiT.from_pretrained(tmp_path).eval()(**inputs, task_code=one), out)
