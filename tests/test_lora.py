"""LoRA encoder: exact round trips, rank/error monotonicity, save/load, PEFT adapters, clear errors."""

from __future__ import annotations

import pytest
import torch

from weightgen.checkpoint import save_model
from weightgen.encoders.lora import LoRAEncoder, load_peft, lora_retention
from weightgen.errors import ArchError, CheckpointError, ConfigError, WeightgenError
from weightgen.space.dataset import zoo_weights
from weightgen.specs import ArchSpec

MLP = ArchSpec("mlp", (8, 12, 8, 3))
CNN = ArchSpec("cnn", (4, 6, 3))


def _weights(arch: ArchSpec, n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A base (P,) and n models (n, P) near it."""
    g = torch.Generator().manual_seed(seed)
    base = arch.layout().flatten(arch.init_params(1, g))[0]
    return base, base + 0.1 * torch.randn(n, base.numel(), generator=g)


def _full_rank(arch: ArchSpec) -> int:
    return max(min(s[0], s[1:].numel()) for s in map(torch.Size, arch.layout().shapes) if len(s) > 1)


def _module(arch: ArchSpec, flat: torch.Tensor) -> torch.nn.Module:
    module = arch.build().eval()
    module.load_state_dict(arch.layout().unflatten(flat))
    return module


@pytest.mark.parametrize("arch", [MLP, CNN], ids=["mlp", "cnn"])
def test_full_rank_round_trip_is_exact(arch):
    base, flat = _weights(arch)
    enc = LoRAEncoder.from_flat(arch, base, rank=_full_rank(arch))
    factors = enc.encode(flat)
    name = enc.layers[0]
    out, fan_in = arch.layout().shapes[0][0], torch.Size(arch.layout().shapes[0][1:]).numel()
    assert factors[f"{name}.lora_A"].shape == (4, enc.config.rank, fan_in)
    assert factors[f"{name}.lora_B"].shape == (4, out, enc.config.rank)
    assert factors[f"{name}.bias_delta"].shape == (4, out)
    torch.testing.assert_close(enc.decode(factors), flat, atol=1e-5, rtol=0)
    one = enc.encode(flat[1])  # one model: no N axis
    torch.testing.assert_close(enc.decode(one), flat[1], atol=1e-5, rtol=0)


def test_error_decreases_as_rank_grows():
    base, flat = _weights(MLP)
    errors = []
    for rank in (1, 2, 4, 8):
        enc = LoRAEncoder.from_flat(MLP, base, rank)
        errors.append((enc.decode(enc.encode(flat)) - flat).norm().item())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-4  # rank 8 is full rank for every layer of 8-12-8-3


def test_multiplicative_mode_round_trip_and_no_peft_export(tmp_path):
    base, flat = _weights(MLP)
    enc = LoRAEncoder.from_flat(MLP, base, rank=_full_rank(MLP), mode="multiplicative")
    torch.testing.assert_close(enc.decode(enc.encode(flat)), flat, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="additive"):
        enc.export_peft(enc.encode(flat[0]), tmp_path / "adapter")
    with pytest.raises(ConfigError, match="unknown LoRA mode"):
        LoRAEncoder(MLP.to_dict(), mode="hadamard")


def test_save_pretrained_round_trip(tmp_path):
    base, flat = _weights(CNN)
    enc = LoRAEncoder.from_flat(CNN, base, rank=3)
    enc.save_pretrained(tmp_path / "enc")
    again = LoRAEncoder.from_pretrained(tmp_path / "enc")
    assert again.config.arch == CNN.to_dict() and again.config.rank == 3
    assert torch.equal(again.base, enc.base)
    factors = enc.encode(flat)
    assert torch.equal(again.decode(factors), enc.decode(factors))


def test_from_base_checkpoint(tmp_path):
    base, _ = _weights(MLP)
    path = save_model(_module(MLP, base), tmp_path / "base.safetensors")
    enc = LoRAEncoder.from_base(path, rank=2)
    assert enc.arch == MLP and torch.equal(enc.base, base)


@pytest.mark.parametrize("arch", [MLP, CNN], ids=["mlp", "cnn"])
def test_peft_adapter_matches_decoded_model(arch, tmp_path):
    base, flat = _weights(arch)
    enc = LoRAEncoder.from_flat(arch, base, rank=2)
    factors = enc.encode(flat[0])
    folder = enc.export_peft(factors, tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "weightgen_lora.json"} <= {
        p.name for p in folder.iterdir()
    }
    peft_model = load_peft(folder, enc.base_module())
    x = torch.randn(16, arch.in_dim)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(x), _module(arch, enc.decode(factors))(x), atol=1e-5, rtol=0)
    back = enc.import_peft(folder)
    assert back.keys() == factors.keys()
    assert all(torch.equal(back[k], factors[k]) for k in factors)


def test_mismatched_base_raises(tmp_path):
    base, flat = _weights(MLP)
    enc = LoRAEncoder.from_flat(MLP, base, rank=2)
    folder = enc.export_peft(enc.encode(flat[0]), tmp_path / "adapter")
    other = LoRAEncoder.from_flat(MLP, base + 1e-3, rank=2)
    with pytest.raises(CheckpointError, match="sha256"):
        other.import_peft(folder)
    with pytest.raises(CheckpointError, match="sha256"):
        load_peft(folder, other.base_module())


def test_wrong_arch_raises(tmp_path):
    base, flat = _weights(MLP)
    enc = LoRAEncoder.from_flat(MLP, base, rank=2)
    wrong = ArchSpec("mlp", (8, 12, 8, 4))
    with pytest.raises(ArchError, match=r"MLP 8-12-8-3.*MLP 8-12-8-4"):
        enc.encode(flat, arch=wrong)
    with pytest.raises(ArchError, match="MLP 8-12-8-3"):
        enc.encode(torch.zeros(2, wrong.layout().numel))
    with pytest.raises(WeightgenError, match="NaN or inf"):
        enc.encode(torch.full_like(flat, float("nan")))
    folder = enc.export_peft(enc.encode(flat[0]), tmp_path / "adapter")
    other = LoRAEncoder.from_flat(wrong, _weights(wrong)[0], rank=2)
    with pytest.raises(ArchError, match=r"MLP 8-12-8-3.*MLP 8-12-8-4"):
        other.import_peft(folder)


def test_from_zoo_and_retention(debug_zoo):
    slug = "mlp-64-16-3-relu"
    enc = LoRAEncoder.from_zoo(debug_zoo, slug, rank=2)
    (w,) = zoo_weights(debug_zoo, canonical=True, archs=[slug])
    torch.testing.assert_close(enc.base, w.train.mean(0))
    retention = lora_retention(debug_zoo, slug, ranks=(1, 16))
    assert set(retention) == {1, 16}
    assert retention[16] == pytest.approx(1.0, abs=1e-6)  # 16 = full rank of 64-16-3
