"""The residual wiring, decided once from `model.norm_placement`: where a block's norm sits, how much the
residual weighs in the sum, whether the stack ends normalized, and the init scale that goes with it.

    post      x = N(x + f(x))            pre   x = x + f(N(x))
    deepnorm  x = N(alpha * x + f(x))    none  x = x + f(x)

Block and ConvBlock, the final-norm decision, both families' init and the Hugging Face export take this
answer (the exported config carries `norm_first` and `residual_alpha`, so its modeling file decides
nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from albert_gpt.config import ModelConfig


@dataclass(frozen=True)
class Wiring:
    norm_first: bool  # the norm before the branch, x + f(N(x)) (pre, none); else after the sum
    alpha: float  # the residual's weight in the sum: DeepNet's (2N)^(1/4) for N applications, else 1
    has_norm: bool  # False for none: an identity stands where the norm would
    ends_normalized: bool  # the stack's output is a norm's output (post, deepnorm): no final norm needed
    # DeepNet's init scale beta = (8N)^(-1/4) for the value, FFN and output projections (deepnorm only)
    beta: float | None

    def branch_scale(self, cfg: ModelConfig, branches_per_layer: int) -> float:
        """The factor on init_std for a residual branch's output projection: GPT-2's 1/sqrt(branches * N)
        (DeepNorm: beta) under `init_scheme: gpt2`; 1 under `normal` (nothing scaled with depth)."""
        if cfg.init_scheme == "normal":
            return 1.0
        if self.beta is not None:
            return self.beta
        return 1.0 / math.sqrt(branches_per_layer * cfg.n_layers)


def wiring(cfg: ModelConfig) -> Wiring:
    placement, n = cfg.norm_placement, cfg.n_layers
    deepnorm = placement == "deepnorm"
    return Wiring(
        norm_first=placement in ("pre", "none"),
        alpha=(2 * n) ** 0.25 if deepnorm else 1.0,
        has_norm=placement != "none",
        ends_normalized=placement in ("post", "deepnorm"),
        beta=(8 * n) ** -0.25 if deepnorm else None,
    )


def needs_final_norm(cfg: ModelConfig) -> bool:
    """A norm before the head when `model.final_norm` asks for a normalized stream there and the blocks do
    not already end in one."""
    return cfg.final_norm and not wiring(cfg).ends_normalized
