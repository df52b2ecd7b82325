"""Per-depth statistics of the residual stream, the norms and the gradients (the `diag/` tags).

A shared block is applied at several depths, so everything about activations is keyed by the
depth of the application, never by the module. Statistics are collected through the model's
`tracer` argument; nothing is registered on the model, so with diagnostics off (no tracer)
the forward pass and the backward pass are exactly the plain ones.

Use, on the steps that log diagnostics (the trainer does this every log.diagnostics_interval
steps; with the interval 0 it never builds a DepthDiagnostics):

    diag = DepthDiagnostics(model)
    _, loss = diag.forward(model, x, y)    # = with diag.capture(): model(x, y, tracer=diag.tracer)
    loss.backward()
    scalars = diag.after_backward()        # {"diag/depth_03/attn_update_ratio": ..., ...}
    histograms = diag.histograms           # {"diag/hist/final_hidden": 1-D tensor, ...}

Shapes: B batch, T tokens, H hidden size, L layer applications (depth).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from albert_gpt.checkpoint.weights import unwrap_model
from albert_gpt.modeling.norms import NORM_TYPES

# TensorBoard bins a histogram on the host; a few tens of thousands of values give the same
# picture as millions and keep a diagnostics step from copying a whole activation off the GPU.
MAX_HISTOGRAM_VALUES = 1 << 16

# Parameter names of the norm classes in norms.py, shown as the names the papers use.
_NORM_PARAM_NAMES = {"weight": "gamma", "bias": "beta", "bn.weight": "gamma", "bn.bias": "beta"}


def _token_norms(x: torch.Tensor) -> torch.Tensor:
    """(B, T, H) -> (B, T) L2 norm of every token vector, in float32."""
    return torch.linalg.vector_norm(x.float(), dim=-1)


def _subsample(x: torch.Tensor) -> torch.Tensor:
    """Flatten to at most MAX_HISTOGRAM_VALUES values (an even stride, so no RNG is touched)."""
    flat = x.detach().float().reshape(-1)
    stride = max(1, math.ceil(flat.numel() / MAX_HISTOGRAM_VALUES))
    return flat[::stride].cpu()


class DepthDiagnostics:
    """Collects one step's `diag/` statistics of `model` (any CausalLM, possibly wrapped).

    Activation statistics are taken on the micro-batch run inside `capture()`; parameter
    statistics on whatever gradients the parameters hold when `after_backward` is called.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = unwrap_model(model)
        self._capturing = False
        self._stats: dict[int, dict[str, torch.Tensor]] = {}
        self._residual: dict[int, torch.Tensor] = {}  # depth -> what the current branch is added to
        self._layer_in: dict[int, torch.Tensor] = {}
        self._grad_out: dict[int, torch.Tensor] = {}
        self._final_hidden: torch.Tensor | None = None
        self.histograms: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def capture(self) -> Iterator[DepthDiagnostics]:
        """Record what `tracer` sees during this block (one forward pass)."""
        self._stats, self._residual, self._layer_in, self._grad_out = {}, {}, {}, {}
        self._final_hidden, self.histograms = None, {}
        self._capturing = True
        try:
            yield self
        finally:
            self._capturing = False

    def forward(
        self, model: nn.Module, idx: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`model(idx, targets)` with this step's statistics captured.

        A torch.compile wrapper is bypassed for this one call: compiling would trace the
        tracer (and its tensor hooks) into the graph. The eager module holds the same
        parameters, so the step's gradients are unchanged.
        """
        eager = getattr(model, "_orig_mod", model)
        with self.capture():
            return eager(idx, targets, tracer=self.tracer)

    def tracer(self, depth: int, point: str, tensor: torch.Tensor) -> None:
        """The model's tracer callback: statistics at one trace point of one application.

        Only the trace points are read (modeling.block.TRACE_POINTS), never the block: what the
        residual stream is and what a branch is added to are points of their own, so the same
        code serves every placement.
        """
        if not self._capturing:
            return
        stats = self._stats.setdefault(depth, {})
        with torch.no_grad():
            x = tensor.detach()
            name, _, what = point.partition("_")
            if point == "layer_in":
                self._layer_in[depth] = x
            elif what == "residual":
                self._residual[depth] = x
            elif what == "norm_in":
                # ||x|| / sqrt(H) per token: the RMS a norm divides by, averaged over tokens.
                stats[f"{name}_norm_in_rms"] = (_token_norms(x) / math.sqrt(x.size(-1))).mean()
            elif what == "norm_out":
                x32 = x.float()
                stats[f"{name}_norm_out_mean"] = x32.mean()
                stats[f"{name}_norm_out_std"] = x32.std(correction=0)
            elif what == "branch":
                # How big an update is next to what it is added to (alpha * stream in DeepNorm).
                residual = torch.linalg.vector_norm(self._residual[depth].float())
                stats[f"{name}_update_ratio"] = torch.linalg.vector_norm(x.float()) / residual
            elif point == "layer_out":
                self._layer_out_stats(depth, x, stats)
                self._final_hidden = x
        if point == "layer_out" and tensor.requires_grad and torch.is_grad_enabled():
            tensor.register_hook(self._grad_hook(depth))

    def _layer_out_stats(self, depth: int, out: torch.Tensor, stats: dict[str, torch.Tensor]) -> None:
        """ALBERT Figure 1 analogue: how far each application moves every token vector."""
        inp = self._layer_in[depth].float()
        out32 = out.float()
        stats["layer_out_rms"] = (_token_norms(out32) / math.sqrt(out.size(-1))).mean()
        stats["io_l2"] = _token_norms(out32 - inp).mean()
        cos = torch.nn.functional.cosine_similarity(out32, inp, dim=-1)  # (B, T)
        stats["io_angle_deg"] = torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0))).mean()

    def _grad_hook(self, depth: int):
        def hook(grad: torch.Tensor) -> None:
            self._grad_out[depth] = torch.linalg.vector_norm(grad.detach().float())

        return hook

    def after_backward(self, activation_grad_scale: float = 1.0) -> dict[str, float]:
        """All `diag/` scalars of the captured step; call after backward, before zero_grad.

        `activation_grad_scale` is the factor the captured micro-batch's loss was multiplied
        by before backward (fp16 loss scale / gradient-accumulation steps); the gradient
        norms with respect to layer outputs are divided by it, so they are those of that
        micro-batch's mean loss. Parameter gradients are read as they are (already unscaled).
        """
        names: list[str] = []
        values: list[torch.Tensor] = []
        for depth in sorted(self._stats):
            prefix = f"diag/depth_{depth:02d}/"
            for key, value in self._stats[depth].items():
                names.append(prefix + key)
                values.append(value)
            if depth in self._grad_out:
                names.append(prefix + "grad_norm_out")
                values.append(self._grad_out[depth] / activation_grad_scale)
        for key, value in parameter_statistics(self.model).items():
            names.append(key)
            values.append(value)
        # One device-to-host copy for every statistic of the step.
        host = torch.stack([v.float().reshape(()) for v in values]).tolist() if values else []
        scalars = dict(zip(names, host))
        if self._final_hidden is not None:
            self.histograms["diag/hist/final_hidden"] = _subsample(self._final_hidden)
        if self._grad_out:
            by_depth = [self._grad_out[d] / activation_grad_scale for d in sorted(self._grad_out)]
            self.histograms["diag/hist/grad_norm_by_depth"] = torch.stack(by_depth).float().cpu()
        return scalars


def _grad_norm(params: list[nn.Parameter]) -> torch.Tensor | None:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def parameter_statistics(model: Any) -> dict[str, torch.Tensor]:
    """Gradient norm of every distinct parameter group, and the norms of gamma / beta.

    Groups are the distinct modules: `block_{g}` is model.blocks[g], and its parts are its child
    modules (a transformer block's attn, attn_norm, ffn, ffn_norm; an LSTM layer's projections and
    norms; a conv block's branch and norm). A part shared with an earlier block (partial sharing) is
    reported once, under the first block holding it.
    """
    model = unwrap_model(model)
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for g, block in enumerate(model.blocks):
        prefix = f"diag/params/block_{g}/"
        parts = list(block.named_children())
        own = [(n, p) for n, p in block.named_parameters(recurse=False)]
        if own:  # parameters held by the block itself (the LN-LSTM's gate bias)
            grad = _grad_norm([p for _, p in own])
            if grad is not None:
                out[f"{prefix}own_grad_norm"] = grad
        for part, module in parts:
            if id(module) in seen or not any(True for _ in module.parameters()):
                continue
            seen.add(id(module))
            grad = _grad_norm(list(module.parameters()))
            if grad is not None:
                out[f"{prefix}{part}_grad_norm"] = grad
            if isinstance(module, NORM_TYPES):
                for pname, p in module.named_parameters():
                    label = _NORM_PARAM_NAMES.get(pname, pname.replace(".", "_"))
                    out[f"{prefix}{part}_{label}_norm"] = torch.linalg.vector_norm(p.detach().float())
    embedding_parts = ("tok_emb", "pos_emb", "emb_proj", "head_proj")
    embeddings = [m for m in (getattr(model, name, None) for name in embedding_parts) if m is not None]
    grad = _grad_norm([p for m in embeddings for p in m.parameters()])
    if grad is not None:
        out["diag/params/embeddings/grad_norm"] = grad
    final = list(model.final_norm.named_parameters())
    if final:
        grad = _grad_norm([p for _, p in final])
        if grad is not None:
            out["diag/params/final_norm/grad_norm"] = grad
        for pname, p in final:
            label = _NORM_PARAM_NAMES.get(pname, pname.replace(".", "_"))
            out[f"diag/params/final_norm/{label}_norm"] = torch.linalg.vector_norm(p.detach().float())
    return out

