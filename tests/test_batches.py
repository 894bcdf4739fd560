"""What goes into a generator's training batch: the arch draw of neuron-set batches (`depth_weight`)
and the jittered task code of LoRA batches (`code_jitter`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, load_train_script

from weightgen.config import load_config
from weightgen.errors import ConfigError
from weightgen.generators.training import TEXT_ONLY_SALT, drop_mask, jitter_levels, sample_set_batch
from weightgen.specs import ArchSpec
from weightgen.tasks import LEVEL_ENTRIES, get_task, task_code


def _arch_data(hidden: tuple[int, ...], models: int):
    arch = ArchSpec("mlp", (64, *hidden, 3))
    return SimpleNamespace(nodes=torch.zeros(models, 1), layout=SimpleNamespace(arch=arch),
                           prompts=torch.zeros(models, 1, dtype=torch.long))


def _deep_share(data, depth_weight: float, draws: int = 2000) -> float:
    picks = [sample_set_batch(data, 2, step, 0, 0, depth_weight)[0] for step in range(draws)]
    return sum(len(d.layout.arch.sizes) == 4 for d in picks) / draws


def test_depth_weight_shifts_batches_to_deeper_archs():
    # two one-hidden-layer archs of 30 models and one two-layer arch of 30: a third of the batches by
    # model count; a weight of 4 per extra layer makes it 4 / (1 + 1 + 4) = two thirds
    data = [_arch_data((16,), 30), _arch_data((32,), 30), _arch_data((24, 16), 30)]
    assert abs(_deep_share(data, 1.0) - 1 / 3) < 0.05
    assert abs(_deep_share(data, 4.0) - 2 / 3) < 0.05
    a, b = sample_set_batch(data, 5, 7, 0, 0, 4.0), sample_set_batch(data, 5, 7, 0, 0, 4.0)
    assert a[0] is b[0] and torch.equal(a[1], b[1])  # still reproducible from (seed, rank, step)


def test_jitter_moves_only_the_levels_a_task_has():
    codes = torch.stack([task_code(get_task(t)) for t in
                         ("digits-rotate-30", "digits-rotate-15+invert", "digits-subset-3-5-8", "digits-blur-1+noise-0.1")])
    out = jitter_levels(codes, 0.05, torch.Generator().manual_seed(0))
    changed = (out != codes).nonzero().tolist()
    assert changed and all(col in LEVEL_ENTRIES and codes[row, col] != 0 for row, col in changed)
    assert not (out[2] != codes[2]).any()  # a subset task has no level
    assert out[1, 110] == codes[1, 110] == 1  # inversion has no level to jitter
    assert torch.equal(out, jitter_levels(codes, 0.05, torch.Generator().manual_seed(0)))
    assert torch.equal(jitter_levels(codes, 0.0, torch.Generator()), codes)


def test_text_dropout_draws_its_own_rows():
    # the text-only mask must not coincide with the null-prompt mask of the same step
    a, b = drop_mask(512, 0.5, 3, 0, 0), drop_mask(512, 0.5, 3, 0, 0, salt=TEXT_ONLY_SALT)
    assert 0.4 < a.float().mean() < 0.6 and 0.4 < b.float().mean() < 0.6
    assert not torch.equal(a, b) and torch.equal(b, drop_mask(512, 0.5, 3, 0, 0, salt=TEXT_ONLY_SALT))


@pytest.mark.parametrize(("script", "config", "key", "value", "message"), [
    ("set_diffusion", "debug-set-diffusion.yaml", "depth_weight", "0", "depth_weight must be above 0"),
    ("set_ar", "debug-set-ar.yaml", "depth_weight", "-1", "depth_weight must be above 0"),
    ("diffusion", "debug-lora-diffusion.yaml", "text_dropout", "1.5", "text_dropout is a share"),
    ("diffusion", "debug-lora-diffusion.yaml", "code_jitter", "-0.1", "code_jitter is a standard deviation"),
    ("diffusion", "debug-lora-diffusion.yaml", "snr_gamma", "-1", "snr_gamma is 0"),
    ("diffusion", "debug-lora-diffusion.yaml", "task_loss", "1.0", "needs a LoRA zoo"),  # no-zoo is no LoRA zoo
    ("diffusion", "debug-lora-diffusion.yaml", "adapter_tokens", "rows", "delta or factors"),
    ("diffusion", "debug-lora-diffusion.yaml", "adapter_tokens", "factors", "latent_components"),  # the config has 4
    ("set_diffusion", "debug-set-diffusion.yaml", "task_loss", "-1", "task_loss must be >= 0"),
    ("set_diffusion", "debug-set-diffusion.yaml", "task_examples", "0", "task_examples >= 1"),
])
def test_bad_batch_settings_are_one_clear_error_before_any_work(script, config, key, value, message, tmp_path):
    module = load_train_script(script)
    cfg_class = next(v for k, v in vars(module).items() if k.endswith("Config") and k != "GeneratorTrainConfig"
                     and isinstance(v, type) and v.__module__ == module.__name__)
    cfg = load_config(cfg_class, ROOT / "configs" / "generator" / config,
                      [f"zoo={tmp_path / 'no-zoo'}", f"out={tmp_path / 'out'}", f"{key}={value}"])
    with pytest.raises(ConfigError, match=message):
        module.main(cfg)
    assert not (tmp_path / "out").exists()
