"""`build_model`: the language model `model.arch` names, built from the model config."""

from __future__ import annotations

from albert_gpt.config import ModelConfig
from albert_gpt.modeling.base import CausalLM


def build_model(cfg: ModelConfig) -> CausalLM:
    """AlbertGPT (transformer), LSTMLM (lstm) or ConvLM (conv); the config has been validated already."""
    if cfg.arch == "lstm":
        from albert_gpt.modeling.recurrent import LSTMLM

        return LSTMLM(cfg)
    if cfg.arch == "conv":
        from albert_gpt.modeling.convolution import ConvLM

        return ConvLM(cfg)
    from albert_gpt.modeling.model import AlbertGPT

    return AlbertGPT(cfg)
