"""LoRA encoder: a model is a base plus one low-rank delta per layer; PEFT adapter export and import.

Every weight matrix W (out, in) of a model is written as the base's W0 plus a rank-r product,

    additive:        W = W0 + B A              B (out, r), A (r, in)
    multiplicative:  W = W0 ⊙ (1 + B A)

(Hu et al., "LoRA", 2021). B A is the best rank-r approximation, in Frobenius norm, of the delta
W - W0 (additive) or of the relative delta (W - W0) / W0 (multiplicative), by truncated SVD
(Eckart-Young): D = U S Vh, B = U_r sqrt(S_r), A = sqrt(S_r) Vh_r. A 3x3 convolution weight
(Co, Ci, 3, 3) is the matrix (Co, Ci*9), as in PEFT's Conv2d LoRA (lora_A a 3x3 conv to r channels,
lora_B a 1x1 conv). Where min(out, in) < r the factors are zero-padded, so every layer has rank r.

Biases: LoRA has no bias factors, so the bias delta b - b0 is stored in full (out values per layer,
small next to the weights) and added back, in both modes. In PEFT it is `lora_B.bias`
(`LoraConfig(lora_bias=True)`), which adds exactly that delta on top of the untouched base bias.

The multiplicative mode divides by W0: where the base is zero the delta is lost, and tiny base
entries make large ratios that dominate the SVD; it is exact at full rank only where W0 != 0, and
PEFT adapters are additive, so only an additive encoder exports them.

The base is a buffer, so `save_pretrained` stores it. With `from_zoo` it is the mean of the
canonicalised training models, which is also the canonicalisation reference: align a new model
with `weightgen.space.symmetry.canonicalize(arch, flat, reference=encoder.base)` before encoding.
An exported adapter folder holds `weightgen_lora.json` with the sha256 of the base weights, and
loading it onto any other base raises a CheckpointError.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from safetensors.torch import load_file
from torch import nn

from weightgen import atomic
from weightgen.checkpoint import load_state_dict
from weightgen.errors import ArchError, CheckpointError, ConfigError, WeightgenError, ZooError
from weightgen.metrics import evaluate_flat
from weightgen.space.dataset import ArchWeights, zoo_weights
from weightgen.specs import ArchSpec
from weightgen.tasks import get_task
from weightgen.zoo.store import ZooStore

MODES = ("additive", "multiplicative")
IDENTITY_FORMAT = "weightgen-lora-adapter/1"
IDENTITY_NAME = "weightgen_lora.json"  # beside peft's adapter_config.json + adapter_model.safetensors
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # peft's key prefix for a PeftModel wrapping a plain nn.Module


def weights_sha256(flat: torch.Tensor) -> str:
    """Identity of a flat weight vector: sha256 of its float32 bytes."""
    return hashlib.sha256(flat.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


class LoRAEncoder(ModelMixin, ConfigMixin):
    """Flat weights (N, P) of one arch <-> rank-r factors of their deltas from `base` (P,)."""

    @register_to_config
    def __init__(self, arch: dict, rank: int = 4, mode: str = "additive"):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"unknown LoRA mode '{mode}'; known: {', '.join(MODES)}")
        if rank < 1:
            raise ConfigError(f"LoRA rank must be at least 1, got {rank}")
        self.arch = ArchSpec.from_dict(arch)
        layout = self.arch.layout()
        self.layers = [n.removesuffix(".weight") for n in layout.names if n.endswith(".weight")]
        self.shapes = dict(zip(layout.names, layout.shapes))
        self.register_buffer("base", torch.zeros(layout.numel))  # (P,) base flat weights

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_flat(cls, arch: ArchSpec, base: torch.Tensor, rank: int = 4, mode: str = "additive") -> LoRAEncoder:
        enc = cls(arch.to_dict(), rank, mode)
        enc._check_flat(base.unsqueeze(0))
        enc.base.copy_(base)
        return enc

    @classmethod
    def from_zoo(cls, store: ZooStore | str | Path, arch_slug: str, rank: int = 4, mode: str = "additive") -> LoRAEncoder:
        """Base = mean of the canonicalised training (not held-out) models of one arch of a zoo."""
        w = _zoo_arch(store, arch_slug)
        return cls.from_flat(w.arch, w.train.mean(0), rank, mode)

    @classmethod
    def from_base(cls, checkpoint_path: str | Path, rank: int = 4, mode: str = "additive") -> LoRAEncoder:
        """Base = the weights of a weightgen checkpoint (file or folder)."""
        sd, meta = load_state_dict(checkpoint_path)
        arch = ArchSpec.from_dict(meta["arch"])
        return cls.from_flat(arch, arch.layout().flatten(sd).float(), rank, mode)

    # -- checks -------------------------------------------------------------------------------
    def check_arch(self, arch: ArchSpec | None) -> None:
        if arch is not None and arch != self.arch:
            raise ArchError(f"this LoRA encoder was built for {self.arch.describe()}, not {arch.describe()}")

    def _check_flat(self, flat: torch.Tensor) -> None:
        if flat.shape[-1] != self.base.numel():
            raise ArchError(
                f"flat weights have {flat.shape[-1]} values, but this LoRA encoder was built for "
                f"{self.arch.describe()} with {self.base.numel()}"
            )
        if not flat.isfinite().all():
            raise WeightgenError("flat weights hold NaN or inf; LoRA factors need finite weights")

    @property
    def factor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each factor of one model (`encode` adds a leading N for a batch)."""
        r, out = self.config.rank, {}
        for name in self.layers:
            out_dim, *fan_in = self.shapes[f"{name}.weight"]
            fan_in = int(torch.Size(fan_in).numel())  # Ci*9 for a 3x3 convolution
            out.update({f"{name}.lora_A": (r, fan_in), f"{name}.lora_B": (out_dim, r), f"{name}.bias_delta": (out_dim,)})
        return out

    @property
    def base_sha256(self) -> str:
        return weights_sha256(self.base)

    def base_module(self) -> nn.Module:
        """A fresh `arch.build()` holding the base weights."""
        module = self.arch.build()
        module.load_state_dict(self.arch.layout().unflatten(self.base.detach().clone()))
        return module.eval()

    # -- encode / decode ----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, flat: torch.Tensor, arch: ArchSpec | None = None) -> dict[str, torch.Tensor]:
        """Flat weights (N, P) -> {"{layer}.lora_A": (N, r, in), "{layer}.lora_B": (N, out, r),
        "{layer}.bias_delta": (N, out)}; `in` is Ci*9 for convolutions. (P,) gives one model's
        factors without the N axis."""
        self.check_arch(arch)
        self._check_flat(flat)
        single = flat.dim() == 1
        flat = flat.reshape(-1, flat.shape[-1]).to(self.base.device, torch.float64)
        base = self.base.double()
        sd, sd0 = self.arch.layout().unflatten(flat), self.arch.layout().unflatten(base)
        r, out = self.config.rank, {}
        for name in self.layers:
            w0 = sd0[f"{name}.weight"].flatten(1)  # (out, in)
            delta = sd[f"{name}.weight"].flatten(2) - w0  # (N, out, in)
            if self.config.mode == "multiplicative":
                delta = torch.where(w0 != 0, delta / w0.where(w0 != 0, 1.0), 0.0)
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)  # (N, out, k), (N, k), (N, k, in)
            k = min(r, s.shape[-1])
            root = s[:, :k].sqrt()
            out[f"{name}.lora_B"] = F.pad(u[..., :k] * root.unsqueeze(1), (0, r - k))  # (N, out, r)
            out[f"{name}.lora_A"] = F.pad(root.unsqueeze(2) * vh[:, :k], (0, 0, 0, r - k))  # (N, r, in)
            out[f"{name}.bias_delta"] = sd[f"{name}.bias"] - sd0[f"{name}.bias"]
        return {k: v.float()[0] if single else v.float() for k, v in out.items()}

    @torch.no_grad()
    def decode(self, factors: dict[str, torch.Tensor], arch: ArchSpec | None = None) -> torch.Tensor:
        """Factors as `encode` gives them -> flat weights (N, P), or (P,) for one model's factors."""
        self.check_arch(arch)
        for key, shape in self.factor_shapes.items():
            if key not in factors or tuple(factors[key].shape[-len(shape):]) != shape:
                got = tuple(factors[key].shape) if key in factors else "nothing"
                raise ArchError(f"LoRA factor '{key}' of {self.arch.describe()} should end in shape {shape}, got {got}")
        single = factors[f"{self.layers[0]}.lora_A"].dim() == 2
        sd0 = self.arch.layout().unflatten(self.base)
        sd = {}
        for name in self.layers:
            a, b, db = (factors[f"{name}.{k}"].to(self.base) for k in ("lora_A", "lora_B", "bias_delta"))
            if single:
                a, b, db = a.unsqueeze(0), b.unsqueeze(0), db.unsqueeze(0)
            w0 = sd0[f"{name}.weight"]
            ba = (b @ a).reshape(-1, *w0.shape)  # (N, out, in) -> (N, *weight shape)
            sd[f"{name}.weight"] = w0 * (1 + ba) if self.config.mode == "multiplicative" else w0 + ba
            sd[f"{name}.bias"] = sd0[f"{name}.bias"] + db
        flat = self.arch.layout().flatten(sd)
        return flat[0] if single else flat

    # -- PEFT ---------------------------------------------------------------------------------
    def export_peft(self, factors: dict[str, torch.Tensor], folder: str | Path) -> Path:
        """Write one model's factors (no N axis, or N = 1) as a PEFT LoRA adapter that
        `PeftModel.from_pretrained(encoder.base_module(), folder)` loads, plus `weightgen_lora.json`."""
        from peft import LoraConfig, get_peft_model

        if self.config.mode != "additive":
            raise ConfigError("PEFT LoRA adapters are additive; an encoder with mode='multiplicative' cannot export one")
        factors = {k: v[0] if v.dim() == (2 if k.endswith("bias_delta") else 3) else v for k, v in factors.items()}
        self.decode(factors)  # checks names and shapes (ArchError) before anything is written
        # scale lora_alpha / r = 1; the bias delta rides in lora_B.bias
        r = self.config.rank
        config = LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, target_modules=list(self.layers), lora_bias=True)
        model = get_peft_model(self.base_module(), config)
        with torch.no_grad():
            for name in self.layers:
                layer = model.base_model.model.get_submodule(name)
                lora_a, lora_b = layer.lora_A["default"], layer.lora_B["default"]
                lora_a.weight.copy_(factors[f"{name}.lora_A"].reshape(lora_a.weight.shape))  # (r, in) or (r, Ci, 3, 3)
                lora_b.weight.copy_(factors[f"{name}.lora_B"].reshape(lora_b.weight.shape))  # (out, r) or (Co, r, 1, 1)
                lora_b.bias.copy_(factors[f"{name}.bias_delta"])
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        try:
            with warnings.catch_warnings():
                # peft 0.21's pre-save check takes the 1-D `lora_B.bias` of lora_bias=True for an
                # unsharded ZeRO-3/FSDP tensor and warns; these biases are complete
                warnings.filterwarnings("ignore", message=r".*LoRA tensor\(s\) have invalid shape")
                model.save_pretrained(str(tmp))
            (folder / IDENTITY_NAME).unlink(missing_ok=True)  # never leave an old identity beside new weights
            for f in tmp.iterdir():
                os.replace(f, folder / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        identity = {"format": IDENTITY_FORMAT, "arch": self.arch.to_dict(), "rank": self.config.rank,
                    "mode": self.config.mode, "base_sha256": self.base_sha256}
        atomic.write_text(folder / IDENTITY_NAME, json.dumps(identity, indent=1))
        return folder

    def import_peft(self, folder: str | Path) -> dict[str, torch.Tensor]:
        """Read an adapter `export_peft` wrote (safetensors only) back into one model's factors."""
        folder = Path(folder)
        if self.config.mode != "additive":
            raise ConfigError("PEFT LoRA adapters are additive; import them with a mode='additive' encoder")
        _check_identity(folder, self.arch, self.base_sha256)
        weights = folder / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise CheckpointError(f"{folder} has no {ADAPTER_WEIGHTS}; weightgen reads adapters only as safetensors")
        try:
            sd = load_file(str(weights))
            cfg = json.loads((folder / "adapter_config.json").read_text())
            r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{folder} is not a readable PEFT LoRA adapter ({e})") from e
        if r != self.config.rank:
            raise CheckpointError(f"adapter in {folder} has rank {r}, this encoder rank {self.config.rank}")
        scale = alpha / (r**0.5 if cfg.get("use_rslora") else r)  # peft's scaling, folded into B
        out = {}
        for name in self.layers:
            key = f"{PEFT_PREFIX}{name}"
            if f"{key}.lora_A.weight" not in sd:
                raise CheckpointError(f"adapter in {folder} lacks '{key}.lora_A.weight' of {self.arch.describe()}")
            out_dim = self.shapes[f"{name}.bias"][0]
            out[f"{name}.lora_A"] = sd[f"{key}.lora_A.weight"].float().reshape(r, -1)
            out[f"{name}.lora_B"] = sd[f"{key}.lora_B.weight"].float().reshape(out_dim, r) * scale
            out[f"{name}.bias_delta"] = sd.get(f"{key}.lora_B.bias", torch.zeros(out_dim)).float() * scale
        return out


def _read_identity(folder: Path) -> dict:
    path = folder / IDENTITY_NAME
    try:
        identity = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder} has no readable {IDENTITY_NAME}, so its base is unknown") from e
    if not isinstance(identity, dict) or identity.get("format") != IDENTITY_FORMAT or "arch" not in identity:
        raise CheckpointError(f"{path} is not a weightgen LoRA adapter identity ({IDENTITY_FORMAT})")
    return identity


def _check_identity(folder: Path, arch: ArchSpec, base_sha: str) -> None:
    """Raise unless the adapter in `folder` was exported for `arch` and base weights of this sha256."""
    identity = _read_identity(folder)
    adapter_arch = ArchSpec.from_dict(identity["arch"])
    if adapter_arch != arch:
        raise ArchError(f"adapter in {folder} is for {adapter_arch.describe()}, not {arch.describe()}")
    if identity.get("base_sha256") != base_sha:
        raise CheckpointError(
            f"adapter in {folder} was made for base weights with sha256 {str(identity.get('base_sha256'))[:12]}…, "
            f"but these base weights have sha256 {base_sha[:12]}…; load it onto the base it was exported from"
        )


def load_peft(folder: str | Path, base_module: nn.Module):
    """`peft.PeftModel.from_pretrained(base_module, folder)` after checking that `base_module` holds
    the exact base weights the adapter was exported from (CheckpointError if not)."""
    from peft import PeftModel

    folder = Path(folder)
    arch = getattr(base_module, "arch", None) or ArchSpec.from_dict(_read_identity(folder)["arch"])
    _check_identity(folder, arch, weights_sha256(arch.layout().flatten(base_module.state_dict())))
    return PeftModel.from_pretrained(base_module, str(folder)).eval()


def _zoo_arch(store: ZooStore | str | Path, arch_slug: str) -> ArchWeights:
    store = store if isinstance(store, ZooStore) else ZooStore(store)
    (w,) = zoo_weights(store, canonical=True, archs=[arch_slug])
    if not len(w.train):
        raise ZooError(f"zoo {store.root} has no training models of {arch_slug} to take a mean base from")
    return w


def lora_retention(
    store: ZooStore | str | Path, arch_slug: str, ranks=(1, 2, 4, 8), mode: str = "additive"
) -> dict[int, float]:
    """Per rank, the mean over the arch's held-out models of acc(decode(encode(w))) / acc(w) on each
    model's test split; base = mean of the canonicalised training models."""
    w = _zoo_arch(store, arch_slug)
    if not len(w.held_out):
        raise ZooError(f"arch {arch_slug} has no held-out models to measure LoRA retention on")
    tasks = [get_task(r["task"]) for r in w.held_out_records]
    acc = evaluate_flat(w.arch, w.held_out, tasks)["acc"]  # (M,)
    out = {}
    for rank in ranks:
        enc = LoRAEncoder.from_flat(w.arch, w.train.mean(0), rank, mode)
        rec = evaluate_flat(w.arch, enc.decode(enc.encode(w.held_out)), tasks)["acc"]  # (M,)
        out[rank] = (rec / acc).mean().item()
    return out
