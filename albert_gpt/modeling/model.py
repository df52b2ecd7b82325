"""AlbertGPT: a causal LM of post-LN blocks shared across depth (ALBERT-style).

Shapes: B batch, T tokens, V vocabulary, Vp padded vocabulary, E token-embedding size,
H hidden size.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from albert_gpt.config import ModelConfig
from albert_gpt.modeling.base import CausalLM, Tracer, lm_loss, torch_default_init
from albert_gpt.modeling.layers import CausalSelfAttention, FeedForward, KVCache
from albert_gpt.modeling.norms import build_norm, reset_norms
from albert_gpt.modeling.sharing import build_stack
from albert_gpt.modeling.wiring import needs_final_norm, wiring


class AlbertGPT(CausalLM):
    """Token (+ factorization) and position embeddings, the shared stack, a tied LM head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self._build_embeddings_and_head(cfg)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks, self.schedule = build_stack(cfg)
        self.final_norm = build_norm(cfg) if needs_final_norm(cfg) else nn.Identity()
        if self.head_proj is not None:
            # Registered last, where it has always been: the order of parameters is the order of the
            # init's draws and of a checkpoint's optimizer state.
            self._modules["head_proj"] = self._modules.pop("head_proj")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, init_std), zero biases, residual output projections scaled down.

        Scaling is 1/sqrt(2N) (two residual branches per application, N = n_layers
        applications); DeepNorm instead scales FFN, value and output projections by
        beta = (8N)^(-1/4). `init_scheme: normal` scales nothing (a depth-independent init).
        Norms then restore their own defaults.
        """
        if self.cfg.init_scheme == "torch":
            torch_default_init(self)
            return
        std = self.cfg.init_std
        for m in self.modules():  # modules() yields a shared module once
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        w = wiring(self.cfg)
        deepnorm = w.beta is not None
        scaled = std * w.branch_scale(self.cfg, branches_per_layer=2)
        H = self.cfg.n_embd
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, CausalSelfAttention):
                    nn.init.normal_(m.proj.weight, mean=0.0, std=scaled)
                    if deepnorm:
                        m.qkv.weight[2 * H :].normal_(mean=0.0, std=scaled)  # the value rows
                elif isinstance(m, FeedForward):
                    nn.init.normal_(m.proj.weight, mean=0.0, std=scaled)
                    if deepnorm:
                        nn.init.normal_(m.fc.weight, mean=0.0, std=scaled)
        reset_norms(self)

    def embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """(B, T) token ids at positions start .. start+T-1 -> (B, T, H)."""
        T = idx.size(1)
        if start + T > self.cfg.block_size:
            raise ValueError(
                f"sequence of {start + T} tokens exceeds model.block_size ({self.cfg.block_size})"
            )
        x = self.embed_tokens(idx)  # (B, T, H)
        pos = torch.arange(start, start + T, device=idx.device)
        return self.dropout(x + self.pos_emb(pos))

    def trunk(
        self, idx: torch.Tensor, tracer: Tracer | None = None, caches: list[KVCache] | None = None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embeddings and every layer application: (B, T) -> (B, T, H) before the head."""
        start = 0 if caches is None else caches[0].length
        x = self.embed(idx, start)
        for depth, i in enumerate(self.schedule):
            cache = None if caches is None else caches[depth]
            trace = None if tracer is None else functools.partial(tracer, depth)
            x = self.blocks[i](x, cache, trace, valid)
        return x

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, tracer: Tracer | None = None,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) and, given targets (B, T), the mean cross entropy (ignore_index -1).

        `valid` (B, T) marks real tokens when sequences of different lengths are right-padded (pad
        targets -1): causal attention already keeps real tokens from seeing later padding, so only
        BatchNorm uses it, to take its statistics from real tokens."""
        logits = self.head(self.trunk(idx, tracer, valid=valid))
        if targets is None:
            return logits, None
        return logits, lm_loss(logits, targets)

    def new_kv_caches(self) -> list[KVCache]:
        """One empty cache per layer application, each block_size positions long."""
        return [KVCache(self.cfg.block_size) for _ in self.schedule]

    def forward_cached(self, idx: torch.Tensor, caches: list[KVCache]) -> torch.Tensor:
        """Logits (B, T, V) of tokens that continue the sequence held in `caches`."""
        return self.head(self.trunk(idx, caches=caches))

    def next_logits(
        self, idx: torch.Tensor, caches: list[KVCache] | None
    ) -> tuple[torch.Tensor, list[KVCache]]:
        """Logits (B, V) after the last token, reusing keys and values. Once the sequence outgrows
        block_size the context is cropped from the left; positions then shift, so the cache is rebuilt
        from the cropped context at each such step."""
        if caches is not None and idx.size(1) <= self.cfg.block_size:
            return self.forward_cached(idx[:, -1:], caches)[:, -1, :], caches
        caches = self.new_kv_caches()
        return self.forward_cached(idx[:, -self.cfg.block_size :], caches)[:, -1, :], caches
