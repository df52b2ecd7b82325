"""`train(cfg)`: config in, run directory out (checkpoints, TensorBoard curves, metrics.jsonl).

The loop is a sequence of small steps: build everything once (`build_run`), restore a
checkpoint when resuming, then per optimizer step `train_step`, and at intervals log,
evaluate and checkpoint. Batches are a pure function of (seed, step), so resuming needs
only the step, the weights, the optimizer state and the RNG states (and, when streaming, the
stream's position, which is saved with them).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from albert_gpt import checkpoint as ckpt
from albert_gpt.config import Config, ModelConfig, config_to_dict, dump_config, load_config, save_config
from albert_gpt.data.pipeline import DATA_RECORD, write_data_record
from albert_gpt.data.prefetch import FetchFn, batch_source
from albert_gpt.errors import CheckpointError, ConfigError, TrainingError
from albert_gpt.inference.evaluate import evaluate_tokens
from albert_gpt.inference.generate import generate_text
from albert_gpt.modeling.base import CausalLM
from albert_gpt.modeling.counting import count_parameters
from albert_gpt.modeling.factory import build_model
from albert_gpt.runtime import resolve_device, resolve_dtype, seed_everything, set_threads
from albert_gpt.training import dist_checkpoint, distributed
from albert_gpt.training.callbacks import TrainingCallback
from albert_gpt.training.diagnostics import DepthDiagnostics
from albert_gpt.training.distributed import DistInfo
from albert_gpt.training.metrics import MetricsLogger
from albert_gpt.training.optim import build_optimizer, lr_at, set_lr, total_steps
from albert_gpt.training.progress import IntervalMeter, Progress, interactive
from albert_gpt.training.rundir import RunLock, check_run_dir, prepare_run_dir, resume_command, write_run_file
from albert_gpt.training.signals import StopRequest
from albert_gpt.training.step import NonFiniteGuard, train_step
from albert_gpt.training.sysinfo import peak_memory_mb
from albert_gpt.training.unigram import unigram_perplexity

# What the loop logs to: the run's metrics (rank 0) or a no-op stand-in on the other ranks.
Metrics = MetricsLogger | distributed.NullMetrics

if TYPE_CHECKING:  # imported for real inside build_run: the data stack pulls in `datasets`
    from albert_gpt.data.batches import RandomWindowSampler
    from albert_gpt.data.pipeline import PreparedData
    from albert_gpt.data.streaming import StreamBatches

log = logging.getLogger("albert_gpt")

VAL_TAGS = ("val/loss", "val/perplexity", "val/bits_per_byte")


@dataclass
class Run:
    """Everything built once before the loop."""

    cfg: Config  # resolved: model.vocab_size filled in
    run_dir: Path
    device: torch.device
    dtype: torch.dtype
    model: CausalLM  # the plain module: checkpoints, generation
    forward_model: Callable[..., Any]  # what training steps call: the model, or torch.compile of it
    # What evaluation calls: never compiled. Its batch shapes differ from training's (eval.batch_size,
    # a short last batch), and each new shape would recompile, then train on a dynamic-shape graph.
    eval_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    data: PreparedData
    sampler: RandomWindowSampler | StreamBatches
    total: int  # optimizer steps of the whole run
    tokens_per_step: int  # global: all ranks together
    unigram_ppl: float
    dist: DistInfo = field(default_factory=DistInfo)  # rank and strategy under torchrun
    lock: RunLock | None = None  # rank 0's lock on the run directory, released when training ends
    eval_seconds: float = 0.0  # wall time spent evaluating and sampling in this process
    hparams_first: tuple[str, ...] = ()  # config keys TensorBoard's hparams table shows first


@dataclass
class State:
    """What changes step to step and goes into a checkpoint."""

    step: int = 0  # optimizer steps completed
    tokens: int = 0  # training tokens consumed (skipped steps included: the data moved on)
    best_val_loss: float | None = None
    last_checkpoint: str | None = None
    last_val: dict[str, Any] = field(default_factory=dict)
    last_train_loss: float | None = None


def console_loggers() -> list[logging.Logger]:
    """The loggers whose console handlers print albert_gpt's messages: the library's own (the Python API's
    enable_logging) and the root (the command line's basicConfig). Only these are redirected around the
    progress bar; redirecting the root when it had no handler would print every message a second time."""
    def prints(logger: logging.Logger) -> bool:
        return any(type(h) is logging.StreamHandler for h in logger.handlers)

    return [lg for lg in (logging.getLogger("albert_gpt"), logging.root) if prints(lg)]


def describe_stack(m: ModelConfig) -> str:
    """The banner's words for the layer stack, e.g. "6 layer applications of 1 shared block, post-LN"."""
    arch = {"transformer": "block", "conv": "conv block", "lstm": "LSTM layer"}[m.arch]
    if m.n_groups == m.n_layers:
        stack = f"{m.n_layers} {arch}s, unshared"
    elif m.n_groups == 1:
        stack = f"{m.n_layers} layer applications of 1 shared {arch}"
    else:
        stack = f"{m.n_layers} layer applications of {m.n_groups} shared {arch}s"
    if m.arch == "transformer" and m.sharing != "all" and m.n_groups < m.n_layers:
        stack += f" (sharing {m.sharing} only)"
    if m.arch == "lstm":
        return f"{stack}, {m.norm} in the cell" if m.norm != "none" else f"{stack}, no norm"
    norm = {"layernorm": "LN", "rmsnorm": "RMSNorm", "batchnorm": "BatchNorm"}.get(m.norm, m.norm)
    return f"{stack}, {m.norm_placement}-{norm}" if m.norm_placement != "none" else f"{stack}, no norm"


def against_unigram(perplexity: float, unigram: float) -> str:
    """How a validation perplexity compares with the unigram reference, in words that stay true when the
    model is still worse than it (early in training)."""
    if perplexity <= unigram:
        return f"{unigram / perplexity:.1f}x below the unigram's {unigram:.1f}"
    return f"{perplexity / unigram:.1f}x above the unigram's {unigram:.1f}"


def train(cfg: Config, resume: bool = False, callbacks: Sequence[TrainingCallback] = (),
          hparams_first: Sequence[str] = ()) -> dict[str, Any]:
    """Train as `cfg` says; with `resume`, continue the run in cfg.run_dir from its latest checkpoint.
    `callbacks` (training.callbacks.TrainingCallback) are told about the run as it goes, on rank 0.
    `hparams_first`: config keys shown first in TensorBoard's hparams table (a sweep's varied keys).

    Returns the final metrics. A SIGINT / SIGTERM stops after the current step with a
    checkpoint; the result then has `interrupted` set to the signal's name. Under torchrun every
    process calls this; rank 0 alone writes the run directory.
    """
    info = distributed.init_distributed(cfg.run)
    try:
        result = _train(cfg, resume, info, callbacks, hparams_first)
        distributed.barrier()  # no rank closes its connections while another may still be using them
        return result
    finally:
        distributed.shutdown(info)  # also on errors and after a signal's checkpoint


def _train(
    cfg: Config, resume: bool, info: DistInfo, callbacks: Sequence[TrainingCallback] = (),
    hparams_first: Sequence[str] = (),
) -> dict[str, Any]:
    started = time.perf_counter()
    run = build_run(cfg, resume, info)
    run.hparams_first = tuple(hparams_first)
    try:
        return _train_run(run, resume, callbacks, started)
    finally:
        if run.lock is not None:
            run.lock.release()


def _train_run(run: Run, resume: bool, callbacks: Sequence[TrainingCallback],
               started: float) -> dict[str, Any]:
    cfg = run.cfg  # resolved: model.vocab_size filled in from the tokenizer
    guard = NonFiniteGuard(cfg.train.max_skipped_steps, grad_clip=cfg.train.grad_clip)
    meter = IntervalMeter(run.device)
    state = State()
    checkpoint_path = ckpt.find_latest(run.run_dir) if resume else None
    if checkpoint_path is not None:
        state = restore(run, checkpoint_path, guard, meter)
    elif resume:
        log.warning("no complete checkpoint in %s; starting from step 0", run.run_dir / "checkpoints")
    main = run.dist.is_main
    # Written only now: a checkpoint that does not fit the config must leave the run's own config intact.
    if main:
        write_run_file(run.run_dir / ckpt.CONFIG_FILE, functools.partial(save_config, cfg))
        write_run_file(run.run_dir / ckpt.TOKENIZER_FILE, run.data.tokenizer.save)
        write_run_file(run.run_dir / DATA_RECORD, functools.partial(write_data_record, run.data))

    resume_step = state.step if resume else None
    callbacks = list(callbacks) if main else []
    logger = _open_metrics(run, resume_step, callbacks) if main else distributed.NullMetrics()
    for callback in callbacks:
        callback.on_train_start(cfg, run.run_dir, state.step)
    logger.text("config", _as_code(dump_config(cfg)), state.step)
    progress = Progress(run.total, state.step, cfg.log.progress and main)
    try:
        with StopRequest() as stop, logging_redirect_tqdm(loggers=console_loggers()), batch_source(
                run.sampler, cfg.train.grad_accum_steps, state.step, run.total, run.device) as fetch:
            _loop(run, state, guard, meter, logger, progress, stop, fetch)
            progress.close()
            if stop.requested and state.step < run.total:
                result = _interrupted(run, state, guard, stop, started)
            else:
                result = _finish(run, state, guard, logger, started)
        for callback in callbacks:
            callback.on_train_end(result)
        return result
    finally:
        progress.close()
        logger.close()


# ---------------------------------------------------------------- setup


def _open_metrics(run: Run, resume_step: int | None, callbacks: Sequence[TrainingCallback]) -> MetricsLogger:
    try:
        return MetricsLogger(
            run.run_dir, run.cfg.log.tensorboard, resume_step=resume_step, callbacks=callbacks
        )
    except OSError as exc:
        where = exc.filename or run.run_dir
        raise TrainingError(f"cannot write metrics in {where} ({exc.strerror or exc}); make it writable, "
                            f"then: {resume_command(run.run_dir)}") from None


def build_run(cfg: Config, resume: bool, info: DistInfo | None = None) -> Run:
    """Device, data, model, optimizer and run directory for `cfg` (`info`: this rank under torchrun)."""
    info = info or DistInfo(device=resolve_device(cfg.run))
    distributed.check_parallel_config(cfg, info)
    set_threads(cfg.run)
    device = info.device
    dtype = resolve_dtype(cfg.run, device)
    # Every rank checks, so a refused run directory stops them all; rank 0 alone locks and writes.
    lock = None
    if info.is_main:
        run_dir, lock = prepare_run_dir(cfg, resume)
    else:
        run_dir = check_run_dir(cfg, resume)
    try:
        return _build_run(cfg, info, device, dtype, run_dir, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _build_run(cfg: Config, info: DistInfo, device: torch.device, dtype: torch.dtype, run_dir: Path,
               lock: RunLock | None) -> Run:
    from albert_gpt.data.pipeline import check_split_sizes, format_stats, prepare_data

    seed_everything(cfg.run.seed)

    with distributed.node_main_first(info):  # one process per node builds the token cache
        data = prepare_data(cfg, progress=cfg.log.progress and info.is_main)
    log.info("%s", format_stats(data))
    check_split_sizes(data, cfg.model.block_size)
    vocab = data.tokenizer.vocab_size
    if cfg.model.vocab_size is not None and cfg.model.vocab_size != vocab:
        raise ConfigError(f"model.vocab_size is {cfg.model.vocab_size} but the tokenizer has {vocab} tokens; "
                          "leave model.vocab_size null to take it from the tokenizer")
    cfg = cfg.with_vocab(vocab)

    model = build_model(cfg.model).to(device)
    distributed.seed_rank(cfg.run.seed, info)
    counts = count_parameters(model)
    m = cfg.model
    log.info("model: %s unique parameters, %s applied (%s)", f"{counts['params_unique']:,}",
             f"{counts['params_applied']:,}", describe_stack(m))
    log.info("device %s, dtype %s%s; run directory %s", device, str(dtype).removeprefix("torch."),
             ", torch.compile" if cfg.run.compile else "", run_dir)
    t = cfg.train
    train_tokens = data.splits["train"].tokens
    sampler = _sampler(cfg, data, info)
    unigram = unigram_perplexity(train_tokens, data.splits["val"].tokens, vocab)
    if info.distributed:
        log.info("torchrun: %d processes, %s, %d sequences per rank per micro-step", info.world_size,
                 info.parallel, t.batch_size)
    wrapped = distributed.wrap_model(model, info)  # before the optimizer: FSDP replaces the parameters
    return Run(
        cfg=cfg, run_dir=run_dir, device=device, dtype=dtype, model=model,
        forward_model=torch.compile(wrapped) if cfg.run.compile else wrapped,
        eval_model=wrapped,
        optimizer=build_optimizer(model, t, device),
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        data=data, sampler=sampler, total=total_steps(cfg, info.world_size),
        tokens_per_step=t.batch_size * t.grad_accum_steps * cfg.model.block_size * info.world_size,
        unigram_ppl=unigram, dist=info, lock=lock,
    )


def _sampler(cfg: Config, data: PreparedData, info: DistInfo) -> RandomWindowSampler | StreamBatches:
    """Random windows of the token cache, or (data.streaming) the next windows of the training stream."""
    from albert_gpt.data.batches import RandomWindowSampler
    from albert_gpt.data.streaming import StreamBatches, TokenWindowStream

    t, block = cfg.train, cfg.model.block_size
    if data.stream is None:
        return RandomWindowSampler(data.splits["train"].tokens, block, t.batch_size, cfg.run.seed,
                                   info.rank, info.world_size)
    stream = TokenWindowStream(data.stream.documents, data.tokenizer, block, cfg.run.seed,
                               cfg.data.shuffle_buffer, separate=not cfg.data.join_rows,
                               skip_items=data.stream.skip_items)
    return StreamBatches(stream, t.batch_size, info.rank, info.world_size)


def restore(run: Run, path: Path, guard: NonFiniteGuard, meter: IntervalMeter) -> State:
    """Load weights, optimizer, scaler, counters and RNG states from checkpoint `path`."""
    ckpt.check_compatible(load_config(path / ckpt.CONFIG_FILE), run.cfg, path)
    where = dist_checkpoint.load_location(run.dist)
    model_state, train_state, _ = ckpt.load_checkpoint(path, map_location=where)
    dist_checkpoint.load_model_state(run.model, model_state, path / ckpt.MODEL_FILE, run.dist)
    dist_checkpoint.load_optimizer_state(run.model, run.optimizer, train_state["optimizer"], run.dist)
    # The checkpoint's hyper-parameters came with its optimizer state; the config's win.
    t = run.cfg.train
    for group, decay in zip(run.optimizer.param_groups, (t.weight_decay, 0.0)):
        group.update(weight_decay=decay, betas=(t.beta1, t.beta2), eps=t.adam_eps)
    if train_state.get("scaler"):
        run.scaler.load_state_dict(train_state["scaler"])
    guard.total, guard.in_a_row = train_state["skipped_total"], train_state["skipped_in_a_row"]
    meter.load_state_dict(train_state["meter"])
    ckpt.restore_rng_state(dist_checkpoint.rank_rng_state(train_state, run.dist))
    if hasattr(run.sampler, "load_state_dict"):  # a stream: its position is not a function of the step
        stream_state = train_state.get("sampler", {}).get("stream")
        if stream_state is None:
            raise CheckpointError(f"{path}: no stream position (it was not written by a streaming run); "
                                  "resume with data.streaming: false")
        run.sampler.load_state_dict(stream_state)
    log.info("resumed from %s (step %d, %s tokens seen)", path, train_state["step"],
             f"{train_state['tokens']:,}")
    return State(step=train_state["step"], tokens=train_state["tokens"],
                 best_val_loss=train_state.get("best_val_loss"), last_checkpoint=str(path))


# ---------------------------------------------------------------- loop

def _loop(run: Run, state: State, guard: NonFiniteGuard, meter: IntervalMeter, logger: Metrics,
          progress: Progress, stop: StopRequest, fetch: FetchFn) -> None:
    cfg = run.cfg
    diag_every = cfg.log.diagnostics_interval
    diag = DepthDiagnostics(run.model) if diag_every > 0 else None  # off: nothing traced, no hooks

    stopping = False  # stop.requested as agreed by all ranks (a signal may reach them a step apart)
    while state.step < run.total and not stopping:
        step = state.step

        next_batch = functools.partial(fetch, step)  # micro -> (x, y), (B, T) each
        lr = lr_at(step, cfg.train, run.total)
        set_lr(run.optimizer, lr)
        collect = diag if diag is not None and (step + 1) % diag_every == 0 else None
        result = train_step(run.forward_model, run.optimizer, run.scaler, next_batch,
                            cfg.train.grad_accum_steps, run.device, run.dtype, cfg.train.grad_clip, collect)
        state.step += 1
        state.tokens += run.tokens_per_step
        meter.add(None if result.skipped else result.loss, run.tokens_per_step)
        if result.skipped:
            log.warning("step %d: non-finite loss or gradient; update skipped", state.step)
        guard.record(state.step, result.skipped, state.last_checkpoint)
        progress.advance()
        if result.diagnostics is not None and collect is not None:
            logger.scalars(result.diagnostics, state.step)
            for tag, values in collect.histograms.items():
                logger.histogram(tag, values, state.step)

        if state.step % cfg.log.interval == 0 or state.step == run.total:
            _log_train(run, state, guard, meter, logger, progress, lr, result.grad_norm)
        evaluate = _due(state.step, cfg.eval.interval, run.total)
        stopping = distributed.any_rank(stop.requested)
        save = _due(state.step, cfg.train.checkpoint_interval, run.total) or stopping
        if evaluate:
            _evaluate(run, state, logger)
        if save:
            _checkpoint(run, state, guard, meter, logger, state.last_val["loss"] if evaluate else None)
        if evaluate or save:
            meter.restart_clock()  # evaluation and checkpoint time are not training throughput

    if state.step >= run.total and not state.last_val:
        # No step ran: train.max_steps 0 (score the initial model), or a resumed run already complete.
        _evaluate(run, state, logger)
        if state.last_checkpoint is None:
            _checkpoint(run, state, guard, meter, logger, state.last_val["loss"])


def _due(step: int, interval: int, total: int) -> bool:
    """Interval work runs every `interval` steps and at the end (interval 0: only at the end)."""
    return step == total or (interval > 0 and step % interval == 0)


def _log_train(run: Run, state: State, guard: NonFiniteGuard, meter: IntervalMeter, logger: Metrics,
               progress: Progress, lr: float, grad_norm: torch.Tensor) -> None:
    interval = meter.take()
    norm = grad_norm.item()
    state.last_train_loss = interval["loss"]
    logger.scalars({
        "train/loss": interval["loss"], "train/lr": lr, "train/grad_norm": norm,
        "train/tokens_per_sec": interval["tokens_per_sec"], "train/skipped_steps": guard.total,
        "sys/peak_memory_mb": peak_memory_mb(run.device),
    }, state.step)
    progress.show(state.step, interval["loss"], lr, interval["tokens_per_sec"], norm)


def _evaluate(run: Run, state: State, logger: Metrics) -> None:
    """Validation loss on eval.batches batches (0 = the whole split), a text sample, the unigram reference."""
    started = time.perf_counter()
    cfg, val = run.cfg, run.data.splits["val"]
    result = evaluate_tokens(
        run.eval_model, val.tokens, cfg.model.block_size, cfg.eval.batch_size or cfg.train.batch_size,
        run.device, run.dtype, max_batches=cfg.eval.batches or None,
        progress=cfg.log.progress and run.dist.is_main and interactive(), rank=run.dist.rank,
        world_size=run.dist.world_size,
    )
    result = distributed.reduce_evaluation(result)  # each rank scored a disjoint share of the batches
    # Bits per byte from the split's bytes per predicted token, so a subset of batches gives
    # the same estimate as the whole split would (exact when eval.batches is 0).
    bpb = result["loss"] / math.log(2) * (len(val) - 1) / val.n_bytes if val.n_bytes else float("nan")
    state.last_val = {"loss": result["loss"], "perplexity": result["perplexity"], "bits_per_byte": bpb}
    if state.best_val_loss is None or result["loss"] < state.best_val_loss:
        state.best_val_loss = result["loss"]
    logger.scalars({
        "val/loss": result["loss"], "val/perplexity": result["perplexity"], "val/bits_per_byte": bpb,
        "val/unigram_perplexity": run.unigram_ppl,
    }, state.step)
    log.info("step %d: val loss %.4f, perplexity %.2f (%s), %.3f bits/byte", state.step, result["loss"],
             result["perplexity"], against_unigram(result["perplexity"], run.unigram_ppl), bpb)
    # FSDP: generating gathers parameters from every rank, so every rank generates (the same text).
    if cfg.eval.sample_tokens > 0 and (run.dist.is_main or run.dist.parallel == "fsdp"):
        text = generate_text(run.model, run.data.tokenizer, cfg.eval.sample_prompt, cfg.eval.sample_tokens,
                             temperature=1.0, seed=cfg.run.seed, device=run.device)
        logger.text("samples", _as_code(cfg.eval.sample_prompt + text), state.step)
    seconds = time.perf_counter() - started
    run.eval_seconds += seconds
    logger.scalars({"val/seconds": seconds}, state.step)
    logger.flush()


def _checkpoint(run: Run, state: State, guard: NonFiniteGuard, meter: IntervalMeter, logger: Metrics,
                val_loss: float | None) -> None:
    cfg = run.cfg
    train_state: dict[str, Any] = {
        "step": state.step,
        "tokens": state.tokens,
        "optimizer": dist_checkpoint.optimizer_state_for_checkpoint(run.model, run.optimizer, run.dist),
        "scaler": run.scaler.state_dict(),
        "rng": ckpt.capture_rng_state(),
        "skipped_total": guard.total,
        "skipped_in_a_row": guard.in_a_row,
        "meter": meter.state_dict(),
        "best_val_loss": state.best_val_loss,
        # The schedule and the batches are pure functions of the step; recorded for inspection.
        "schedule": {"name": cfg.train.schedule, "total_steps": run.total},
        "sampler": {"seed": cfg.run.seed, "next_step": state.step},
    }
    if hasattr(run.sampler, "state_dict"):  # a stream: where it stands, for an exact resume
        train_state["sampler"]["stream"] = run.sampler.state_dict()
    # Collectives first (every rank takes part), then rank 0 writes; the broadcast of the path
    # holds the other ranks until the checkpoint is complete.
    train_state.update(dist_checkpoint.rank_train_state(train_state["rng"], run.dist))
    model_state = dist_checkpoint.model_state_for_checkpoint(run.model, run.dist)
    path = None
    if run.dist.is_main:
        try:
            path = ckpt.save_checkpoint(run.run_dir, state.step, run.model, train_state, cfg,
                                        run.run_dir / ckpt.TOKENIZER_FILE, cfg.train.keep_checkpoints,
                                        val_loss, model_state=model_state)
        except CheckpointError as exc:
            kept = f"the last good checkpoint is {state.last_checkpoint}" if state.last_checkpoint \
                else "no checkpoint was written yet"
            raise TrainingError(f"{exc}; {kept}; make room, then: {resume_command(run.run_dir)}") from None
    state.last_checkpoint = distributed.broadcast_object(str(path) if path is not None else None)
    logger.flush()  # what a resume after a kill keeps: every step up to this checkpoint


# ---------------------------------------------------------------- end

def _result(run: Run, state: State, guard: NonFiniteGuard, started: float) -> dict[str, Any]:
    return {
        "run_dir": str(run.run_dir), "step": state.step, "tokens": state.tokens,
        "train_loss": state.last_train_loss,
        "val_loss": state.last_val.get("loss"), "val_perplexity": state.last_val.get("perplexity"),
        "val_bits_per_byte": state.last_val.get("bits_per_byte"), "best_val_loss": state.best_val_loss,
        "unigram_perplexity": run.unigram_ppl, "skipped_steps": guard.total,
        "wall_time_s": time.perf_counter() - started, "eval_seconds": run.eval_seconds,
        "checkpoint": state.last_checkpoint,
        "interrupted": None,
    }


def _finish(run: Run, state: State, guard: NonFiniteGuard, logger: Metrics, started: float) -> dict:
    hparams = {f"{section}.{key}": value for section, values in config_to_dict(run.cfg).items()
               for key, value in values.items()}
    logger.hparams(hparams, list(VAL_TAGS), first=run.hparams_first)
    result = _result(run, state, guard, started)
    log.info("done: %d steps, %s tokens in %.0f s (%.0f%% of it evaluating); val loss %.4f, perplexity %.2f "
             "(unigram %.1f); %s", state.step, f"{state.tokens:,}", result["wall_time_s"],
             100 * run.eval_seconds / max(result["wall_time_s"], 1e-9), result["val_loss"],
             result["val_perplexity"], run.unigram_ppl, run.run_dir)
    return result


def _interrupted(run: Run, state: State, guard: NonFiniteGuard, stop: StopRequest,
                 started: float) -> dict[str, Any]:
    result = _result(run, state, guard, started)
    result.update(interrupted=stop.signal_name, signal=stop.signum)
    log.warning("stopped by %s at step %d of %d; checkpoint %s\nresume with: %s",
                stop.signal_name, state.step, run.total, state.last_checkpoint, resume_command(run.run_dir))
    return result


def _as_code(text: str) -> str:
    """TensorBoard renders text as markdown; indenting makes a verbatim block (newlines kept)."""
    return "\n".join("    " + line for line in text.splitlines())
