"""Random generator states (python, numpy, torch CPU, CUDA) as plain tensors and numbers.

`random.getstate()` and `np.random.get_state()` return tuples holding ints and numpy arrays that
`torch.load(weights_only=True)` would refuse, so they are stored as int64 tensors and rebuilt here.
Shapes: python state (625,), numpy keys (624,), torch states are 1-D uint8 tensors.
"""

from __future__ import annotations

import logging
import random
from typing import Any, cast

import numpy as np
import torch

log = logging.getLogger(__name__)


def capture_rng_state() -> dict[str, Any]:
    """Every global generator's state, in a form torch.load(weights_only=True) accepts."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = cast(tuple, np.random.get_state())  # the legacy tuple form
    return {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss": gauss_next},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of capture_rng_state: the next random numbers are those that followed the capture."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].cpu().numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        n = min(len(cuda), torch.cuda.device_count())
        for device in range(n):
            torch.cuda.set_rng_state(cuda[device].cpu(), device)
        if n != len(cuda):
            log.warning("checkpoint holds RNG states for %d CUDA devices, %d present", len(cuda), n)
    elif cuda:
        log.warning("checkpoint holds CUDA RNG states but no CUDA device is available; CPU states restored")
