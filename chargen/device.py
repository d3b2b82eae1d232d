"""Where and in which precision to compute, decided once from what the machine offers."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager

import torch

from chargen.errors import ConfigError


def select_device(requested: str = "auto", *, cuda: bool | None = None, mps: bool | None = None) -> torch.device:
    """'auto' picks cuda, then mps, then cpu. The availability flags exist so tests can ask
    what would happen on a GPU machine."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    mps = (torch.backends.mps.is_available() if hasattr(torch.backends, "mps") else False) if mps is None else mps
    if requested == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"unknown --device {requested!r}; use auto, cpu, cuda or mps") from None
    if (device.type == "cuda" and not cuda) or (device.type == "mps" and not mps):
        raise ConfigError(f"--device {requested} is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unsupported --device {requested!r}; use auto, cpu, cuda or mps")
    return device


# oneDNN instruction-set caps below AVX512-BF16: with one set, torch's bf16 LSTM cannot run.
_ONEDNN_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16, and torch not kept to an older instruction set (ATEN_CPU_CAPABILITY,
    ONEDNN_MAX_CPU_ISA: how an AVX2-only CPU is emulated on a newer one)."""
    hardware = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    capped = torch.backends.cpu.get_cpu_capability() != "AVX512" or (
        os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ONEDNN_WITHOUT_BF16
    )
    return bool(hardware) and not capped


def select_precision(
    requested: str, device: torch.device, *, cuda_bf16: bool | None = None, cpu_bf16: bool | None = None
) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. 'auto' uses bf16 where the hardware runs it
    natively (AMX / AVX512-BF16 CPUs, Ampere+ GPUs); elsewhere bf16 would be slower than fp32."""
    if requested == "fp32":
        return None
    if requested == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        return torch.bfloat16 if supported else None
    if device.type == "cpu":
        return torch.bfloat16 if (cpu_has_fast_bf16() if cpu_bf16 is None else cpu_bf16) else None
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[object]:
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def set_threads(threads: int) -> None:
    """Pin intra-op threads; must run before torch does any work to take full effect."""
    if threads > 0:
        torch.set_num_threads(threads)
