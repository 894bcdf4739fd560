"""What a device runs well: bf16 only where the hardware computes in it natively.

Tensors follow `accelerator.device` everywhere (DESIGN.md); this module only answers questions
about a device. bf16 halves memory traffic where the hardware has bf16 units, and is emulated
where it has not: on a CPU without AVX512-BF16 or AMX, bf16 matmuls ran at 0.3 GFLOP/s against
104 GFLOP/s in fp32. A config that asks for bf16 there trains in fp32 instead, and says so.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)
CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 flags, and aarch64's Features entry


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags /proc/cpuinfo lists for the first CPU (empty where there is none,
    as on macOS: bf16 then counts as not native, and fp32 is the safe choice)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return frozenset()
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def bf16_native(device: torch.device | str) -> bool:
    """Whether `device` computes bf16 matmuls in hardware: a CUDA GPU with bf16 units (Ampere and
    later; emulation does not count), or a CPU with AVX512-BF16, AMX-BF16 or Arm's BF16."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(cpu_flags() & CPU_BF16_FLAGS)
    return False


@functools.cache  # each message once per process, however many shards or scripts ask
def _say_once(message: str) -> None:
    logger.warning(message)


def native_precision(requested: str, device: torch.device | str, fallback: str, say: bool = True) -> str:
    """`requested`, unless it is "bf16" and `device` does not run bf16 natively: then `fallback`
    (the caller's name for fp32), with one logged line saying so (once per process, if `say`)."""
    if requested != "bf16" or bf16_native(device):
        return requested
    if say:
        _say_once(f"bf16 asked for, but {torch.device(device)} does not run bf16 natively: training in fp32")
    return fallback


def native_mixed_precision(requested: str) -> str:
    """accelerate's `mixed_precision` flag for this process's device (a generator config's
    `mixed_precision`): `requested`, or "no" where it asks for bf16 the device does not run natively.
    Reads the device before the Accelerator exists, from the process state it will share."""
    if requested != "bf16":
        return requested
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # PartialState() alone ignores ACCELERATE_USE_CPU (weightgen/zoo/build.py says why that matters)
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    return native_precision(requested, state.device, "no", say=state.is_main_process)
