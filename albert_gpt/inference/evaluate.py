"""Perplexity and bits per byte of a token stream, exact or with sliding windows.

Every predicted token counts once: the loss is total NLL / tokens scored (token weighted),
never a mean of per-batch means, so a short last batch is weighted by its size.

Shapes: B = windows in a batch, T = inputs per window (<= block_size), V = vocab_size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import math
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from albert_gpt.config import Config
from albert_gpt.errors import ConfigError, DataError
from albert_gpt.runtime import autocast

if TYPE_CHECKING:  # the data stack is imported where a split is read
    from albert_gpt.data.tokenizer import TextTokenizer

log = logging.getLogger(__name__)

Window = tuple[int, int, int]  # (start, end, score_from) in token positions of the split


def window_plan(n_tokens: int, block_size: int, stride: int | None = None) -> list[Window]:
    """Windows `tokens[start:end]` (at most block_size + 1 tokens: inputs plus shifted targets).

    A window predicts the tokens at positions start+1 .. end-1 and scores those at positions
    >= score_from, so every position 1 .. n_tokens-1 is scored exactly once. Windows start
    every `stride` tokens; stride == block_size gives non-overlapping windows (each scores all
    its targets); a smaller stride gives every scored token at least block_size - stride + 1
    tokens of context, except in the first window, which scores all of its targets. The last window
    always holds block_size + 1 tokens when the text has them, however few it scores.
    """
    stride = block_size if stride is None else stride
    if not 1 <= stride <= block_size:
        raise ConfigError(f"stride must be between 1 and block_size ({block_size}), got {stride}")
    if n_tokens < 2:
        raise DataError(f"need at least 2 tokens to score a prediction, got {n_tokens}")
    plan: list[Window] = []
    scored_to = 1  # first position not yet scored (position 0 has no prediction)
    start = 0
    while scored_to < n_tokens:
        end = min(start + block_size + 1, n_tokens)
        # A last window cut short by the end of the text reaches back for a full context instead
        # (lm-evaluation-harness's rolling windows do the same, so the two agree).
        plan.append((max(0, end - block_size - 1), end, scored_to))
        scored_to = end
        start += stride
    return plan


def _batches(plan: Sequence[Window], batch_size: int) -> Iterator[list[Window]]:
    """Consecutive windows of equal length, at most batch_size at a time (order kept)."""
    batch: list[Window] = []
    for window in plan:
        if batch and (len(batch) == batch_size or window[1] - window[0] != batch[0][1] - batch[0][0]):
            yield batch
            batch = []
        batch.append(window)
    if batch:
        yield batch


def _count_batches(plan: Sequence[Window], batch_size: int) -> int:
    return sum(1 for _ in _batches(plan, batch_size))


def _batch_tensors(tokens: Any, batch: list[Window]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs, targets (B, T) int64 and the mask (B, T) of targets to score."""
    rows = np.stack([np.asarray(tokens[start:end], dtype=np.int64) for start, end, _ in batch])
    data = torch.from_numpy(rows)  # (B, T+1)
    length = data.shape[1] - 1
    positions = torch.arange(1, length + 1)  # target j of a window sits at start + 1 + j
    starts = torch.tensor([start for start, _, _ in batch]).unsqueeze(1)
    score_from = torch.tensor([s for _, _, s in batch]).unsqueeze(1)
    mask = starts + positions >= score_from  # (B, T)
    return data[:, :-1], data[:, 1:], mask


@torch.inference_mode()  # no autograd bookkeeping at all (cheaper than no_grad)
def _score(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[float, int]:
    """(sum of NLL over the masked targets, number of masked targets) for one batch."""
    x, y, mask = x.to(device), y.to(device), mask.to(device)
    with autocast(device, dtype):
        logits, _ = model(x)  # (B, T, V)
    # the sum runs in float64: a split of millions of tokens would lose digits in float32
    nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view_as(y)
    return nll[mask].double().sum().item(), int(mask.sum().item())


def evaluate_tokens(
    model: torch.nn.Module,
    tokens: Any,
    block_size: int,
    batch_size: int,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    stride: int | None = None,
    max_batches: int | None = None,
    n_bytes: int | None = None,
    progress: bool = False,
    rank: int = 0,
    world_size: int = 1,
    train_mode: bool = False,
) -> dict[str, Any]:
    """Token-weighted loss (nats), perplexity and bits per byte of `model` on `tokens`.

    The model is scored in eval mode unless `train_mode` (BatchNorm then normalizes each batch with
    its own statistics, updating its running ones as training would, and dropout is active: what the
    train/eval gap of a model is measured with).

    `tokens` is any 1-D integer sequence supporting slicing (numpy memmap, array, tensor).
    `max_batches` scores only the first batches of the plan, a fixed subset, so periodic
    evaluations during training are comparable with each other. `n_bytes` (UTF-8 bytes of
    the text behind `tokens`) turns the loss into bits per byte: total NLL / ln 2 / n_bytes
    when the whole split is scored; for a subset, the same figure estimated from the subset's
    loss and the split's bytes per predicted token.

    With `world_size` > 1 (torchrun) this rank scores batches rank, rank + world_size, ... of
    those; summing `nll_sum` and `tokens` over ranks gives the single-process figure
    (albert_gpt.training.distributed.reduce_evaluation).
    """
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside world_size {world_size}")
    if batch_size < 1:
        raise ConfigError(f"evaluation batch size must be >= 1, got {batch_size}")
    if max_batches is not None and max_batches < 1:
        raise ConfigError(f"max_batches must be >= 1 (or None for all), got {max_batches}")
    device = torch.device(device)
    plan = window_plan(len(tokens), block_size, stride)
    total = _count_batches(plan, batch_size)
    if max_batches is not None:
        total = min(total, max_batches)
    was_training = model.training
    model.train(train_mode)
    nll_sum, count = 0.0, 0
    try:
        mine = range(rank, total, world_size)
        batches = itertools.islice(_batches(plan, batch_size), rank, total, world_size)
        bar = tqdm(batches, total=len(mine), desc="eval", unit="batch", disable=not progress, leave=False)
        for batch in bar:
            batch_nll, batch_count = _score(model, *_batch_tensors(tokens, batch), device, dtype)
            nll_sum += batch_nll
            count += batch_count
        for _ in range(-(-total // world_size) - len(mine)):
            # Under FSDP every forward pass is a collective: a rank one batch short still runs
            # one (its result discarded), so all ranks make the same number of passes.
            _score(model, *_batch_tensors(tokens, next(_batches(plan, batch_size))), device, dtype)
    finally:
        model.train(was_training)
    loss = nll_sum / count if count else math.nan  # count 0: a rank whose share is empty
    predicted = len(tokens) - 1  # == count when every batch was scored
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else math.inf,  # exp overflows a float past ~709
        "bits_per_byte": loss * predicted / math.log(2) / n_bytes if n_bytes else None,
        "tokens": count,
        "nll_sum": nll_sum,
    }


def evaluate_run(
    run_dir: Path,
    split: str = "val",
    stride: int | None = None,
    checkpoint: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    device: str | None = None,
    dtype: str | None = None,
    text: Path | None = None,
) -> dict[str, Any]:
    """Evaluate a run's checkpoint (best, else latest, unless named) on one of its splits, or on the text
    file `text` with the run's own tokenizer.

    `device` and `dtype` default to what this machine has (`auto`), not to what the run was trained on.
    A split is read from the token cache the run recorded (no access to the training data needed); only
    when that cache is gone is the data prepared again. A text file needs no data at all.
    """
    from albert_gpt.checkpoint import load_run_checkpoint, require_run_dir

    run_dir = Path(run_dir)
    require_run_dir(run_dir)
    if split not in ("train", "val", "test"):
        raise ConfigError(f"unknown split {split!r} (choose one of: train, val, test)")
    loaded = load_run_checkpoint(run_dir, checkpoint, device="cpu")
    cfg, model, tokenizer, path = loaded.cfg, loaded.model, loaded.tokenizer, loaded.path
    torch_device, torch_dtype = inference_device(device, dtype)
    model.to(torch_device)
    result = evaluate_loaded(
        run_dir,
        cfg,
        model,
        tokenizer,
        torch_device,
        torch_dtype,
        split=split,
        text=text,
        stride=stride,
        batch_size=batch_size,
        progress=progress,
    )
    return {
        **result,
        "checkpoint": path.name,
        "step": loaded.meta.get("step"),
        "note": fallback_note(run_dir, checkpoint, path),
    }


def evaluate_loaded(
    run_dir: Path,
    cfg: Config,
    model: torch.nn.Module,
    tokenizer: TextTokenizer,
    device: torch.device,
    dtype: torch.dtype,
    split: str = "val",
    text: Path | None = None,
    stride: int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """`evaluate_run` for a model already in memory (on `device`): the Python API's path, which loads a
    run once and evaluates it as often as asked."""
    block_size = cfg.model.block_size
    if stride is not None and not 1 <= stride <= block_size:
        raise ConfigError(f"--stride must be between 1 and block_size ({block_size}), got {stride}")
    if text is not None:
        tokens, n_bytes, source = *_text_tokens(Path(text), tokenizer), str(text)
    else:
        tokens, n_bytes, source = _split_tokens(cfg, Path(run_dir), split, tokenizer, progress)
    if len(tokens) < 2:
        raise DataError(f"{source} has {len(tokens)} tokens; nothing to evaluate")
    result = evaluate_tokens(
        model,
        tokens,
        block_size,
        batch_size or cfg.eval.batch_size or cfg.train.batch_size,
        device,
        dtype,
        stride=stride,
        n_bytes=n_bytes,
        progress=progress,
    )
    return {
        **result,
        "split": "text" if text is not None else split,
        "source": source,
        "stride": stride or block_size,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
    }


def inference_device(device: str | None, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    """The device and dtype to evaluate or sample on: the ones asked for, else this machine's best
    (`auto`), checked with the same rules and messages as `run.device` and `run.dtype`."""
    from albert_gpt.config import RunConfig
    from albert_gpt.runtime import resolve_device, resolve_dtype
    from albert_gpt.typed_values import coerce

    hints = typing.get_type_hints(RunConfig)
    run = RunConfig(
        device=coerce("--device", device or "auto", hints["device"], from_text=True),
        dtype=coerce("--dtype", dtype or "auto", hints["dtype"], from_text=True),
    )
    resolved = resolve_device(run)
    return resolved, resolve_dtype(run, resolved)


def _split_tokens(cfg: Config, run_dir: Path, split: str, tokenizer: TextTokenizer,
                  progress: bool) -> tuple[np.ndarray, int, str]:
    from albert_gpt.data.pipeline import prepare_data, read_data_record

    prepared = read_data_record(run_dir)
    if prepared is None:
        # A relative cache_dir is taken inside the run directory, never wherever eval happens to run.
        cache_dir = Path(cfg.data.cache_dir)
        if not cache_dir.is_absolute():
            inside = dataclasses.replace(cfg.data, cache_dir=str(run_dir / cache_dir))
            cfg = dataclasses.replace(cfg, data=inside)
        log.info(
            "%s: its token cache is not where the run recorded it; preparing the data again in %s",
            run_dir,
            cfg.data.cache_dir,
        )
        prepared = prepare_data(cfg, progress=progress)
    cached, own = _tokenizer_sha256(prepared.tokenizer), _tokenizer_sha256(tokenizer)
    if cached != own:
        raise DataError(
            f"token cache {prepared.cache_dir} was made with another tokenizer than the checkpoint's "
            f"(sha256 {cached[:12]} against {own[:12]}): its ids would be scored as other tokens; "
            "score a text file instead with --text FILE"
        )
    tokens = prepared.splits[split]
    return tokens.tokens, tokens.n_bytes, f"split {split!r} of {run_dir}"


def _tokenizer_sha256(tokenizer: TextTokenizer) -> str:
    return hashlib.sha256(tokenizer.to_json().encode("utf-8")).hexdigest()


def _text_tokens(path: Path, tokenizer: TextTokenizer) -> tuple[np.ndarray, int]:
    """The file's text as one document after a boundary: the end-of-text token, then its tokens (so its
    first token is predicted from the boundary, as the first token of every document in training); and
    the text's size in UTF-8 bytes."""
    text = _read_text(path)
    unknown = tokenizer.unknown_characters(text)
    if unknown:
        log.warning(
            "%s: %d character(s) the tokenizer never saw in training are scored as the unknown token",
            path,
            len(unknown),
        )
    return np.array([tokenizer.eot_id, *tokenizer.encode(text)], dtype=np.int64), len(text.encode("utf-8"))


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    except FileNotFoundError:
        raise ConfigError(f"--text: no such file: {path}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"--text {path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"--text {path}: cannot read it ({exc.strerror or exc})") from None


def fallback_note(run_dir: Path, asked: str | None, used: Path) -> str | None:
    """Why the checkpoint used is not the one the `best` / `latest` pointer names (it failed
    verification and an older one was taken); None when it is the one asked for."""
    from albert_gpt.checkpoint import read_pointer

    if asked not in (None, "latest"):
        return None  # a checkpoint named explicitly is verified or refused, never replaced
    pointer = "best" if asked is None and read_pointer(run_dir, "best") else "latest"
    named = read_pointer(run_dir, pointer)
    if named and named != used.name:
        return f"{pointer} names {named}, which failed verification; used {used.name} instead"
    return None


def format_eval(result: dict[str, Any]) -> str:
    bpb = result.get("bits_per_byte")
    lines = [
        f"scored         {result.get('source', result.get('split', '-'))}",
        f"device         {result.get('device', '-')} ({result.get('dtype', '-')})",
        f"checkpoint     {result.get('checkpoint') or '-'} (step {result.get('step', '-')})",
        f"stride         {result.get('stride', '-')}",
        f"tokens scored  {result['tokens']:,}",
        f"loss           {result['loss']:.4f} nats/token",
        f"perplexity     {result['perplexity']:.3f}",
        f"bits per byte  {'-' if bpb is None else f'{bpb:.4f}'}",
    ]
    if result.get("note"):
        lines.append(f"note           {result['note']}")
    return "\n".join(lines)
