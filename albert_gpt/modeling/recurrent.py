"""The LSTM language model: token embedding, a stack of LSTM layers (optionally one layer's weights
shared across depth, as ALBERT shares its blocks), and the tied LM head.

`model.norm: none` runs torch's nn.LSTM, the speed reference. Any other norm runs `NormedLSTMLayer`,
Ba et al. 2016's layer-normalized LSTM written as a loop over time:

    gates = N_x(W_x x_t) + N_h(W_h h_{t-1}) + b        (i, f, g, o: nn.LSTM's gate order)
    c_t   = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t   = sigmoid(o) * tanh(N_c(c_t))

with N a LayerNorm over the 4H gate pre-activations (and over H for the cell), an RMSNorm, or a
BatchNorm: the input term's statistics over batch and time (as practice has it: they leak later
positions at train time), the recurrent and cell terms' over the batch at each step; with
`model.batch_axes: batch` every term's statistics are taken over the batch at each step (causal), with
running statistics per step.

Training windows are block_size tokens long and each starts from a zero state: backpropagation is
truncated to the window, and evaluation reads the same windows as the transformer's. Generation carries
the state from token to token, so its context is not cut at block_size.

Shapes: B batch, T tokens, H hidden size (= the LSTM's input and state size), G = 4H gates.
"""

from __future__ import annotations

import functools
import math
from typing import Any, cast

import torch
from torch import nn

from albert_gpt.config import ModelConfig
from albert_gpt.modeling.base import CausalLM, Tracer, lm_loss, torch_default_init
from albert_gpt.modeling.block import ignore_trace
from albert_gpt.modeling.norms import BATCH_NORMS, CausalBatchNorm, build_norm, reset_norms

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (B, H)


def _normalize(norm: nn.Module, x: torch.Tensor, valid: torch.Tensor | None, step: int = 0) -> torch.Tensor:
    """Apply `norm` to (B, T, D) or (B, D) x (the latter at time `step`); a BatchNorm takes its
    statistics from the real tokens that `valid` ((B, T) or (B,)) marks, a causal one at each step's
    position."""
    if not isinstance(norm, BATCH_NORMS):
        return norm(x)
    at = {"start": step} if isinstance(norm, CausalBatchNorm) else {}
    if x.dim() == 2:
        return norm(x[:, None, :], None if valid is None else valid[:, None], **at)[:, 0, :]
    return norm(x, valid, **at)


class NormedLSTMLayer(nn.Module):
    """One LSTM layer with a norm on each gate term and on the cell (see the module docstring). With
    identity norms it computes exactly what nn.LSTM computes (tested)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        H = cfg.n_embd
        self.input_proj = nn.Linear(H, 4 * H, bias=False)  # W_x
        self.recurrent_proj = nn.Linear(H, 4 * H, bias=False)  # W_h
        self.bias = nn.Parameter(torch.zeros(4 * H))  # b, after the norms (a norm would remove it)
        self.input_norm = build_norm(cfg, 4 * H)
        every_site = cfg.lstm_norm_sites == "all"  # "input": only the input term is normalized
        self.recurrent_norm = build_norm(cfg, 4 * H) if every_site else nn.Identity()
        self.cell_norm = build_norm(cfg, H) if every_site else nn.Identity()

    def reset_parameters(self) -> None:
        """nn.LSTM's default: every weight and the bias U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.bias.numel() // 4)
        for p in (self.input_proj.weight, self.recurrent_proj.weight, self.bias):
            nn.init.uniform_(p, -bound, bound)

    def forward(
        self, x: torch.Tensor, state: State | None = None, valid: torch.Tensor | None = None, start: int = 0
    ) -> tuple[torch.Tensor, State]:
        """(B, T, H) -> outputs (B, T, H) and the last (h, c); `start` is x's first position in its
        sequence (a causal BatchNorm keeps statistics per position)."""
        B, T, H = x.shape
        # The input term of every step at once: (B, T, G).
        gx = _normalize(self.input_norm, self.input_proj(x), valid, start) + self.bias
        if state is None:
            h = c = x.new_zeros(B, H)
        else:
            h, c = state
        outputs = []
        for t in range(T):
            valid_t = None if valid is None else valid[:, t]
            recurrent = _normalize(self.recurrent_norm, self.recurrent_proj(h), valid_t, start + t)
            gates = gx[:, t] + recurrent  # (B, G)
            i, f, g, o = gates.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(_normalize(self.cell_norm, c, valid_t, start + t))
            outputs.append(h)
        return torch.stack(outputs, dim=1), (h, c)


class TorchLSTMLayer(nn.Module):
    """One plain LSTM layer, torch's fused nn.LSTM."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.lstm = nn.LSTM(cfg.n_embd, cfg.n_embd, batch_first=True)

    def forward(
        self, x: torch.Tensor, state: State | None = None, valid: torch.Tensor | None = None, start: int = 0
    ) -> tuple[torch.Tensor, State]:
        hc = None if state is None else (state[0][None], state[1][None])  # nn.LSTM wants (1, B, H)
        y, (h, c) = self.lstm(x, hc)
        return y, (h[0], c[0])


class LSTMLM(CausalLM):
    """Embedding -> n_layers LSTM layer applications (n_groups distinct layers) -> tied head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self._build_embeddings_and_head(cfg)
        layer = TorchLSTMLayer if cfg.norm == "none" else NormedLSTMLayer
        self.blocks = nn.ModuleList(layer(cfg) for _ in range(cfg.n_groups))
        self.final_norm = nn.Identity()  # h = o * tanh(.) is bounded already
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Embeddings and projections N(0, init_std); LSTM weights and biases U(-1/sqrt(H), 1/sqrt(H)),
        torch's nn.LSTM default, for both layer kinds; norms their own defaults."""
        if self.cfg.init_scheme == "torch":
            torch_default_init(self)
            return
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=self.cfg.init_std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for block in self.blocks:
            if isinstance(block, TorchLSTMLayer):
                block.lstm.reset_parameters()
            else:
                cast(Any, block).reset_parameters()  # a LayerNormLSTM layer
        reset_norms(self)

    def run_layers(
        self, idx: torch.Tensor, states: list[State] | None = None, tracer: Tracer | None = None,
        valid: torch.Tensor | None = None, start: int = 0,
    ) -> tuple[torch.Tensor, list[State]]:
        """(B, T) -> the last layer's (B, T, H) outputs and every depth's final state; `start` is the
        position of idx's first token since the state was zero."""
        x = self.dropout(self.embed_tokens(idx))
        out_states = []
        for depth, i in enumerate(self.schedule):
            trace = ignore_trace if tracer is None else functools.partial(tracer, depth)
            trace("layer_in", x)
            y, state = self.blocks[i](x, None if states is None else states[depth], valid, start)
            x = self.dropout(y) if depth < len(self.schedule) - 1 else y
            trace("layer_out", x)
            out_states.append(state)
        return x, out_states

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, tracer: Tracer | None = None,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) of a window read from a zero state and, given targets, the mean loss."""
        x, _ = self.run_layers(idx, tracer=tracer, valid=valid)
        logits = self.head(x)
        return logits, (None if targets is None else lm_loss(logits, targets))

    def next_logits(self, idx: torch.Tensor, states: list[State] | None) -> tuple[torch.Tensor, list[State]]:
        """The prompt (its last block_size tokens) once, then one token at a time from the carried state."""
        new = idx[:, -self.cfg.block_size :] if states is None else idx[:, -1:]
        start = 0 if states is None else min(idx.size(1), self.cfg.block_size + 1) - 1
        x, states = self.run_layers(new, states, start=start)
        return self.head(x[:, -1:, :])[:, -1, :], states
