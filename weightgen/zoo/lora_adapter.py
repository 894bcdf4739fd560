"""One LoRA adapter of a zoo's base as a PEFT adapter folder, and back.

    FOLDER/adapter_config.json          peft's LoraConfig (r, lora_alpha, target_modules)
    FOLDER/adapter_model.safetensors    peft's factors, written by peft itself (`save_pretrained`)
    FOLDER/weightgen_adapter.json       weightgen's metadata: format, the base's sha256 and config,
                                        task, prompt, generator, seed, metrics

`PeftModel.from_pretrained(base, FOLDER)` loads it with only peft and transformers installed, where
`base` is the ViT saved in the zoo's `base/` folder (`ViTForImageClassification.from_pretrained`).
weightgen's own loader checks the base's sha256 first: an adapter on another base is meaningless.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from weightgen import atomic
from weightgen.errors import CheckpointError
from weightgen.zoo.lora_base import base_sha256, load_base

ADAPTER_FORMAT = "weightgen-vit-lora/1"
META_NAME = "weightgen_adapter.json"
PEFT_PREFIX = "base_model.model."  # peft's key prefix for a PeftModel around a transformers model


def peft_model(base, lora: dict):
    """A PeftModel around `base` (modified in place by peft) with the zoo's LoRA config."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], target_modules=list(lora["target_modules"]),
                        lora_dropout=0.0, bias="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft 0.21 calls a transformers API deprecated in 5.x
        return get_peft_model(base, config)


@torch.no_grad()
def save_adapter(folder: str | Path, factors: dict[str, torch.Tensor], lora: dict, base_folder: str | Path,
                 **meta) -> Path:
    """Write one adapter's factors (`<module>.lora_A` (r, in), `<module>.lora_B` (out, r)) as a PEFT
    folder; `lora` is the zoo.json `lora` entry (rank, alpha, target_modules, base_sha256)."""
    folder = Path(folder)
    from peft import set_peft_model_state_dict

    model = peft_model(load_base(base_folder, lora["base_sha256"]), lora)
    bad = [name for name, value in factors.items() if not torch.isfinite(value).all()]
    if bad:
        raise CheckpointError(f"adapter factor {bad[0]} holds non-finite values; nothing was written")
    # peft's own key mapping (it inserts the adapter name); every factor must land in the model
    result = set_peft_model_state_dict(model, {f"{PEFT_PREFIX}{name}.weight": value for name, value in factors.items()})
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if result.unexpected_keys or missing:
        raise CheckpointError(f"adapter factors do not match this base's LoRA modules "
                              f"(unexpected {sorted(result.unexpected_keys)[:2]}, missing {sorted(missing)[:2]})")
    info = {"format": ADAPTER_FORMAT, "base_sha256": lora["base_sha256"], "base": lora.get("base"), **meta}
    if folder.exists() and not (folder / META_NAME).is_file():
        raise CheckpointError(f"{folder} exists and is not a weightgen adapter folder; choose another output")
    with atomic.atomic_folder(folder) as tmp:
        model.save_pretrained(str(tmp))
        (tmp / META_NAME).write_text(json.dumps(info, indent=1, sort_keys=True))
    return folder


def read_adapter(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(factors by `<module>.lora_A|B`, weightgen metadata) of an adapter folder, never unpickling."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / META_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder} is not a weightgen adapter folder ({META_NAME} is missing or unreadable)") from e
    if not isinstance(meta, dict) or meta.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{folder / META_NAME} is not a weightgen adapter description (format {ADAPTER_FORMAT})")
    return peft_factors(folder), meta


def peft_factors(folder: str | Path) -> dict[str, torch.Tensor]:
    """The factors (`<module>.lora_A|B`) of any PEFT LoRA folder's adapter_model.safetensors."""
    folder = Path(folder)
    try:
        raw = load_file(str(folder / "adapter_model.safetensors"))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{folder}/adapter_model.safetensors is missing or not a safetensors file") from e
    factors = {}
    for key, value in raw.items():
        if not key.startswith(PEFT_PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise CheckpointError(f"{folder}/adapter_model.safetensors holds '{key[:80]}', which is not a LoRA factor")
        if not value.is_floating_point() or not torch.isfinite(value).all():
            raise CheckpointError(f"adapter factor {key[:80]} is not finite floating point")
        factors[key.removeprefix(PEFT_PREFIX).removesuffix(".weight")] = value
    return factors


def load_adapter(folder: str | Path, base_folder: str | Path):
    """The adapter on its base as a PeftModel (eval mode), after checking the base's sha256."""
    from peft import PeftModel

    _, meta = read_adapter(folder)
    if base_sha256(base_folder) != meta["base_sha256"]:
        raise CheckpointError(f"the adapter in {folder} was trained on another base than {base_folder} (sha256 differs)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # as in peft_model
        return PeftModel.from_pretrained(load_base(base_folder), str(folder)).eval()
