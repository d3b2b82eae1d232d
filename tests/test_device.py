"""Device and precision choice: the GPU path is decided by the same code, so it is tested here on CPU."""

import os
import subprocess
import sys

import pytest
import torch

from chargen.device import select_device, select_precision
from chargen.errors import ConfigError


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"), [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]
)
def test_auto_prefers_cuda_then_mps_then_cpu(cuda: bool, mps: bool, expected: str) -> None:
    assert select_device("auto", cuda=cuda, mps=mps).type == expected


def test_an_explicit_device_that_is_missing_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="--device cuda is not available on this machine; use --device cpu"):
        select_device("cuda", cuda=False, mps=False)
    with pytest.raises(ConfigError, match="unknown --device 'tpu9'"):
        select_device("tpu9", cuda=False, mps=False)


def test_gpu_with_bf16_autocasts_to_bf16_and_older_gpus_stay_fp32() -> None:
    cuda = torch.device("cuda")
    assert select_precision("auto", cuda, cuda_bf16=True) == torch.bfloat16
    assert select_precision("auto", cuda, cuda_bf16=False) is None


def test_cpu_uses_bf16_only_where_it_is_native() -> None:
    cpu = torch.device("cpu")
    assert select_precision("auto", cpu, cpu_bf16=True) == torch.bfloat16
    assert select_precision("auto", cpu, cpu_bf16=False) is None
    assert select_precision("auto", torch.device("mps")) is None


def test_explicit_precision_wins() -> None:
    cpu = torch.device("cpu")
    assert select_precision("fp32", cpu, cpu_bf16=True) is None
    assert select_precision("bf16", cpu, cpu_bf16=False) == torch.bfloat16


@pytest.mark.parametrize(
    "caps", [{"ATEN_CPU_CAPABILITY": "avx2"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, {"ONEDNN_MAX_CPU_ISA": "avx512_core"}]
)
def test_a_cpu_kept_to_an_older_instruction_set_trains_in_fp32(caps: dict[str, str]) -> None:
    """How an AVX2-only CPU is emulated on a newer one: torch's bf16 LSTM cannot run then, so
    'auto' must not choose it (a fresh process: torch reads these when it starts)."""
    probe = "import torch, chargen.device as d; print(d.select_precision('auto', torch.device('cpu')))"
    env = {**os.environ, **caps}
    printed = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    assert printed.strip() == "None"
