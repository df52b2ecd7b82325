"""Every claim of the ledger, in ledger order, by the name its command uses."""

from __future__ import annotations

from typing import TYPE_CHECKING

from albert_gpt.errors import ConfigError

if TYPE_CHECKING:  # the CLI reads INDEX without importing torch
    from albert_gpt.study.claims.ledger import Claim


# The rows by letter, name and title without importing their modules (for `study claim --help`);
# tests/test_claims.py holds it equal to all_claims().
INDEX: tuple[tuple[str, str, str], ...] = (
    ("a", "formula", "LayerNorm is per-token mean, variance, eps, gain and bias"),
    ("b", "gradients", "Normalization keeps gradients steady across depth"),
    ("c", "drift", "LayerNorm reduces internal covariate shift"),
    ("d", "perturbation", "LayerNorm limits the accumulation of small errors through depth"),
    ("e", "activations", "Post-LN keeps the activation scale steady between layers"),
    ("f1", "sensitivity-lr", "Normalization widens the trainable learning-rate range"),
    ("f2", "sensitivity-init", "Normalization reduces sensitivity to the init scale"),
    ("f3", "sensitivity-batch", "Normalization reduces sensitivity to the batch size"),
    ("g", "generalization", "LayerNorm regularizes and improves generalization"),
    ("h", "batch-dependence", "BatchNorm needs batch statistics; LayerNorm does not"),
    ("i", "lstm-norm", "LayerNorm makes an LSTM train faster over more learning rates"),
    (
        "j",
        "conv-depth",
        "In a deep conv LM, LayerNorm keeps activations, gradients and errors from growing with depth",
    ),
    (
        "k",
        "conv-norms",
        "Group and instance norms in place of LayerNorm in a conv LM (a stand-in for combining them)",
    ),
    (
        "l",
        "padded-batchnorm",
        "On padded variable-length batches, BatchNorm trails LayerNorm in LSTM and conv LMs",
    ),
    (
        "m",
        "per-depth-affine",
        "Adaptive normalization for a shared block: per-depth gains (a stand-in), input-conditioned LN",
    ),
    (
        "n",
        "amplification",
        "Post-LN amplifies parameter changes in proportion to depth; DeepNorm and pre-LN do not",
    ),
    (
        "o",
        "frontier",
        "How deep a shared post-LN block trains, with and without warmup, against pre-LN and DeepNorm",
    ),
    (
        "p",
        "attention-stability",
        "Normalization keeps self-attention stable: bounded logits, no entropy collapse",
    ),
    ("q", "contribution", "Post-LN balances each layer application's contribution to the stream"),
    ("r", "width", "LayerNorm's value grows with the model's width"),
)


def help_listing() -> str:
    """One line per claim: letter, name, title."""
    width = max(len(name) for _, name, _ in INDEX)
    return "\n".join(f"  {letter:<3} {name:<{width}}  {title}" for letter, name, title in INDEX)


def all_claims() -> list[Claim]:
    from albert_gpt.study.claims import (
        activations,
        adaptive,
        amplification,
        attention_stability,
        batch_dependence,
        contribution,
        conv_depth,
        conv_norms,
        drift,
        formula,
        frontier,
        generalization,
        gradients,
        padded_batchnorm,
        perturbation,
        recurrent,
        sensitivity,
        width,
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
        amplification.CLAIM,
        frontier.CLAIM,
        attention_stability.CLAIM,
        contribution.CLAIM,
        width.CLAIM,
    ]


def get_claim(name: str) -> Claim:
    claims = {c.name: c for c in all_claims()} | {c.letter: c for c in all_claims()}
    if name not in claims:
        known = ", ".join(f"{c.letter} ({c.name})" for c in all_claims())
        raise ConfigError(f"unknown claim {name!r} (known: {known}, all, ledger)")
    return claims[name]
