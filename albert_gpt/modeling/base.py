"""What every language model here shares, whatever its layers: the tied LM head, the loss, the
per-depth trace, and sampling (`generate`) on top of each model's own way to continue a sequence.

Shapes: B batch, T tokens, V vocabulary, E token-embedding size, H hidden size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from albert_gpt.config import ModelConfig
from albert_gpt.errors import ConfigError
from albert_gpt.modeling.sampling import check_sampling_args, sample_next

# tracer(depth, point, tensor): called at every trace point of every layer application.
Tracer = Callable[[int, str, torch.Tensor], None]


def padded_vocab_size(cfg: ModelConfig) -> int:
    """Rows of the embedding table: vocab_size rounded up to pad_vocab_multiple."""
    m = cfg.pad_vocab_multiple
    if cfg.vocab_size is None:
        raise ConfigError("model.vocab_size is not set (take it from the tokenizer before building)")
    return -(-cfg.vocab_size // m) * m


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy of (B, T, V) logits against (B, T) targets; target -1 is ignored (padding)."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)


def torch_default_init(model: nn.Module) -> None:
    """`model.init_scheme: torch`: every layer takes PyTorch's own default init (its reset_parameters), the
    scale convolutional and recurrent networks are usually trained from; norms too (ones and zeros)."""
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None)
        if m is not model and callable(reset):
            reset()


def group_of_depth(cfg: ModelConfig) -> list[int]:
    """ALBERT's grouping, written once: layer application i runs group i * n_groups // n_layers."""
    return [i * cfg.n_groups // cfg.n_layers for i in range(cfg.n_layers)]


class CausalLM(nn.Module):
    """The parts of a causal LM that do not depend on its layers.

    A subclass defines tok_emb, emb_proj (or None), head_proj (or None), final_norm, blocks and
    schedule (the block of each layer application), `forward(idx, targets, tracer, valid)` and
    `next_logits(idx, state)`, the logits of the next token after `idx` given what the previous call
    returned as `state` (None on the first call; the model decides what to keep).
    """

    cfg: ModelConfig
    vocab_size: int
    tok_emb: nn.Embedding
    emb_proj: nn.Linear | None
    head_proj: nn.Linear | None
    final_norm: nn.Module
    blocks: nn.ModuleList
    schedule: list[int]

    def _build_embeddings_and_head(self, cfg: ModelConfig) -> None:
        """The parts every family shares, built first: the token embedding (E = embedding_dim; E < H adds
        the E -> H projection and the head's H -> E one, ALBERT's factorization) and the dropout."""
        if cfg.vocab_size is None:
            raise ConfigError("model.vocab_size is not set (take it from the tokenizer before building)")
        self.cfg, self.vocab_size = cfg, cfg.vocab_size
        E = cfg.embedding_dim or cfg.n_embd
        factorized = E < cfg.n_embd
        self.tok_emb = nn.Embedding(padded_vocab_size(cfg), E)
        self.emb_proj = nn.Linear(E, cfg.n_embd, bias=cfg.bias) if factorized else None
        self.head_proj = nn.Linear(cfg.n_embd, E, bias=cfg.bias) if factorized else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.schedule = group_of_depth(cfg)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> logits (B, T, V); the head reuses tok_emb's weight, after H -> E when factorized,
        and the padding rows of the table are never returned."""
        x = self.final_norm(x)
        if self.head_proj is not None:
            x = self.head_proj(x)  # (B, T, E)
        return F.linear(x, self.tok_emb.weight)[..., : self.vocab_size]  # (B, T, Vp) -> (B, T, V)

    def embed_tokens(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, H), through the factorization when E < H."""
        x = self.tok_emb(idx)  # (B, T, E)
        return x if self.emb_proj is None else self.emb_proj(x)

    def next_logits(self, idx: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def layer_outputs(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """The (B, T, H) output of every layer application, in depth order."""
        outputs: list[torch.Tensor] = []

        def keep(depth: int, point: str, tensor: torch.Tensor) -> None:
            if point == "layer_out":
                outputs.append(tensor)

        self(idx, tracer=keep)
        return outputs

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        eot_id: int | None = None,
        on_token: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Extend (B, T) prompts by up to max_new_tokens tokens.

        The model runs in eval mode meanwhile (no dropout, BatchNorm on running statistics) and returns
        to its previous mode. With batch size 1, on_token receives every new token and generation stops
        after eot_id (which ends the result).
        """
        check_sampling_args(temperature, top_k, top_p)
        if idx.dim() != 2 or idx.size(1) == 0:
            raise ValueError("generate needs a (B, T) prompt with at least one token")
        if on_token is not None and idx.size(0) != 1:
            raise ValueError("on_token streams one sequence; use batch size 1")
        was_training = self.training
        self.eval()
        try:
            state: Any = None
            for _ in range(max_new_tokens):
                logits, state = self.next_logits(idx, state)  # (B, V)
                token = sample_next(logits, temperature, top_k, top_p, generator)  # (B, 1)
                idx = torch.cat([idx, token.to(idx.device)], dim=1)
                if idx.size(0) == 1:
                    if on_token is not None:
                        on_token(int(token))
                    if eot_id is not None and int(token) == eot_id:
                        break
        finally:
            self.train(was_training)
        return idx
