"""Every claim of the ledger, in ledger order, by the name its command uses."""

from __future__ import annotations

from albert_gpt.errors import ConfigError
from albert_gpt.study.claims.ledger import Claim


def all_claims() -> list[Claim]:
    from albert_gpt.study.claims import (
        activations,
        adaptive,
        batch_dependence,
        conv_depth,
        conv_norms,
        drift,
        formula,
        generalization,
        gradients,
        padded_batchnorm,
        perturbation,
        recurrent,
        sensitivity,
    )

    return [
        formula.CLAIM,
        gradients.CLAIM,
        drift.CLAIM,
        perturbation.CLAIM,
        activations.CLAIM,
        sensitivity.LR_CLAIM,
        sensitivity.INIT_CLAIM,
        sensitivity.BATCH_CLAIM,
        generalization.CLAIM,
        batch_dependence.CLAIM,
        recurrent.CLAIM,
        conv_depth.CLAIM,
        conv_norms.CLAIM,
        padded_batchnorm.CLAIM,
        adaptive.CLAIM,
    ]


def get_claim(name: str) -> Claim:
    claims = {c.name: c for c in all_claims()} | {c.letter: c for c in all_claims()}
    if name not in claims:
        known = ", ".join(f"{c.letter} ({c.name})" for c in all_claims())
        raise ConfigError(f"unknown claim {name!r} (known: {known}, all, ledger)")
    return claims[name]
