"""Peak memory of the run, for the `sys/peak_memory_mb` curve."""

from __future__ import annotations

import sys

import torch


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated by tensors, or on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource  # POSIX only
    except ImportError:
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes on Linux but in bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
