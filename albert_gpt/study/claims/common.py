"""What the claim experiments share: the arms compared, a compact training loop built from the
trainer's own parts (same optimizer, schedule, step and evaluation), and fixed evaluation windows.

Shapes: B batch, T tokens, H hidden.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch

from albert_gpt.config import Config
from albert_gpt.data.batches import RandomWindowSampler
from albert_gpt.errors import TrainingError
from albert_gpt.inference.evaluate import evaluate_tokens
from albert_gpt.modeling.base import CausalLM
from albert_gpt.modeling.block import Block
from albert_gpt.modeling.factory import build_model as build_lm
from albert_gpt.training.optim import build_optimizer, lr_at, set_lr
from albert_gpt.training.step import NonFiniteGuard, train_step
from albert_gpt.training.unigram import unigram_perplexity

if TYPE_CHECKING:  # the workers import the data stack where a claim prepares its corpus
    from albert_gpt.data.pipeline import PreparedData

# Each arm changes one thing against post-LN; "no norm + final LN" keeps the normalized stream in
# front of the head, so it differs from post-LN only inside the blocks.
ARMS: dict[str, list[str]] = {
    "post-LN": ["model.norm_placement=post"],
    "pre-LN": ["model.norm_placement=pre"],
    "no norm + final LN": ["model.norm_placement=none", "model.final_norm=true"],
    "no norm, bare": ["model.norm_placement=none", "model.final_norm=false"],
    "BN per depth": ["model.norm_placement=post", "model.norm=batchnorm", "model.batch_stats=per_depth"],
    "RMSNorm": ["model.norm_placement=post", "model.norm=rmsnorm"],
    # post-LN with DeepNet's residual scale alpha = (2N)^(1/4) and init beta = (8N)^(-1/4) for N applications
    "DeepNorm": ["model.norm_placement=deepnorm"],
}
EVAL_SEED = 1_000_003  # evaluation windows: fixed, apart from every training seed


def sharing_overrides(sharing: str, n_layers: int) -> list[str]:
    return ["model.n_groups=1"] if sharing == "shared" else [f"model.n_groups={n_layers}"]


def transformer_blocks(model: CausalLM) -> list[Block]:
    """The model's distinct blocks, for rows that read a transformer's sub-layers (torch types a
    ModuleList's items as plain modules)."""
    return [cast(Block, block) for block in model.blocks]


_PREPARED: dict[str, PreparedData] = {}


def prepared_data(cfg: Config) -> PreparedData:
    """The config's token splits, prepared once per process (the cache on disk is shared)."""
    from albert_gpt.data.pipeline import prepare_data

    key = repr((dataclasses.astuple(cfg.data), dataclasses.astuple(cfg.tokenizer)))
    if key not in _PREPARED:
        _PREPARED[key] = prepare_data(cfg, progress=False)
    return _PREPARED[key]


def build_model(cfg: Config, vocab_size: int) -> CausalLM:
    torch.manual_seed(cfg.run.seed)
    return build_lm(cfg.model.with_vocab(vocab_size))


@dataclass
class Trained:
    model: CausalLM
    losses: list[float]  # training loss of every step (NaN for a skipped step)
    skipped: int
    diverged: bool  # stopped after too many non-finite steps in a row


def train_model(
    cfg: Config,
    data: PreparedData,
    on_step: Callable[[int, CausalLM], None] | None = None,
    batch_of: Callable[[int, int], tuple[torch.Tensor, ...]] | None = None,
    wrap: Callable[[CausalLM], torch.nn.Module] | None = None,
) -> Trained:
    """cfg.train.max_steps optimizer steps as the trainer takes them (AdamW groups, warmup and
    schedule, clipping, the trainer's non-finite guard), on CPU in float32, without run files.

    `on_step(step, model)` is called before step 0 and after every step. `batch_of(step, micro)`
    replaces the training windows (default: the trainer's seeded sampler); `wrap(model)` gives the module
    the steps call instead of the model (e.g. one that passes a padding mask)."""
    device, dtype = torch.device("cpu"), torch.float32
    t = cfg.train
    model = build_model(cfg, data.tokenizer.vocab_size)
    model.train()
    optimizer = build_optimizer(model, t, device)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    if batch_of is None:
        sampler = RandomWindowSampler(
            data.splits["train"].tokens, cfg.model.block_size, t.batch_size, cfg.run.seed
        )
        batch_of = sampler.batch
    guard = NonFiniteGuard(t.max_skipped_steps, grad_clip=t.grad_clip)
    stepper = wrap(model) if wrap is not None else model
    torch.manual_seed(cfg.run.seed)  # dropout
    losses: list[float] = []
    if on_step is not None:
        on_step(0, model)
    for step in range(t.max_steps):
        set_lr(optimizer, lr_at(step, t, t.max_steps))

        def micro_batch(micro: int, s: int = step) -> Any:
            return batch_of(s, micro)

        result = train_step(
            stepper,
            optimizer,
            scaler,
            micro_batch,
            t.grad_accum_steps,
            device,
            dtype,
            t.grad_clip,
        )
        losses.append(math.nan if result.skipped else float(result.loss))
        try:
            guard.record(step + 1, result.skipped, None)
        except TrainingError:  # more non-finite steps in a row than train.max_skipped_steps
            return Trained(model, losses, guard.total, diverged=True)
        if on_step is not None:
            on_step(step + 1, model)
    return Trained(model, losses, guard.total, diverged=False)


def eval_loss(
    model: CausalLM,
    data: PreparedData,
    cfg: Config,
    split: str = "val",
    batches: int = 8,
    batch_size: int = 16,
    train_mode: bool = False,
) -> float:
    """Token-weighted loss on the split's first `batches` evaluation batches (a fixed subset); with
    `train_mode`, BatchNorm normalizes each of those batches with its own statistics."""
    with torch.no_grad():
        result = evaluate_tokens(
            model,
            data.splits[split].tokens,
            cfg.model.block_size,
            batch_size,
            "cpu",
            max_batches=batches,
            train_mode=train_mode,
        )
    return float(result["loss"])


def unigram_loss(data: PreparedData) -> float:
    """The loss of the trainer's unigram reference (training-split frequencies) on validation."""
    vocab = data.tokenizer.vocab_size
    return math.log(unigram_perplexity(data.splits["train"].tokens, data.splits["val"].tokens, vocab))


def arm_seed_cells(arms: Any, seeds: tuple[int, ...]) -> list[dict[str, Any]]:
    """One cell per arm and seed."""
    return [{"arm": arm, "seed": seed} for arm in arms for seed in seeds]


def probe_batch(data: PreparedData, cfg: Config, batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed training windows for measurements at initialization or between steps."""
    sampler = RandomWindowSampler(data.splits["train"].tokens, cfg.model.block_size, batch_size, EVAL_SEED)
    return sampler.batch(0)


def runs_where(results: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    """The cells whose keys have the given values, in seed order (so arms pair up by seed)."""
    return sorted(
        (r for r in results if all(r.get(k) == v for k, v in match.items())), key=lambda r: r["seed"]
    )
