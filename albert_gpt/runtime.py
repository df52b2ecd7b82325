"""Device, precision and seeding: the few decisions every entry point makes the same way."""

from __future__ import annotations

import contextlib
import random
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from albert_gpt.config import RunConfig
from albert_gpt.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(run: RunConfig) -> torch.device:
    if run.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device: cuda requested but no CUDA device is available (use auto or cpu)")
    if run.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(run.device)


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmul instructions (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def resolve_dtype(run: RunConfig, device: torch.device) -> torch.dtype:
    """The compute dtype for autocast. `auto` picks bf16 only where it is fast."""
    if run.dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    if run.dtype == "float16" and device.type != "cuda":
        raise ConfigError("run.dtype: float16 needs a CUDA device (use bfloat16 or float32 on cpu)")
    return DTYPES[run.dtype]


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed-precision context; a no-op in float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(run: RunConfig) -> None:
    if run.threads > 0:
        torch.set_num_threads(run.threads)


def machine_info(device: torch.device) -> dict[str, object]:
    """What a measurement ran on: processor (and GPU), cores, threads, Python, torch."""
    import os
    import platform

    info: dict[str, object] = {
        "cpu": _cpu_name(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "cpu_bf16": cpu_has_fast_bf16(),
        # the widest vector instructions torch's CPU kernels use here (AVX2, AVX512, ...): CPUs of one name
        # can differ, and the same step then runs at different speeds
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_name() -> str:
    import platform

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        lines = []
    for line in lines:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
