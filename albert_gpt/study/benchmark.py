"""Training-step throughput: the trainer's own step, timed, with FLOPs, MFU, memory and data wait.

Every variant runs `training.step.train_step` (the function the trainer calls) on a model and
optimizer built as the trainer builds them. Variants of a `--compare` run share one process and
take their timed steps in turn (round-robin), so a background load or a thermal change slows
them alike and their ratio stays meaningful.
Shapes: B = batch size, T = block_size, V = vocabulary size.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from albert_gpt.config import Config, load_config
from albert_gpt.data.batches import RandomWindowSampler
from albert_gpt.data.prefetch import FetchFn, batch_source
from albert_gpt.errors import ConfigError
from albert_gpt.modeling.base import CausalLM
from albert_gpt.modeling.counting import flops_per_token
from albert_gpt.modeling.factory import build_model
from albert_gpt.runtime import autocast, machine_info, resolve_device, resolve_dtype, seed_everything
from albert_gpt.study.info import resolve_vocab
from albert_gpt.training.optim import build_optimizer, lr_at, set_lr
from albert_gpt.training.step import train_step

# Dense bf16 tensor-core peaks from the vendors' data sheets (no sparsity). Matched against
# torch.cuda.get_device_name; anything else gets a measured matmul peak.
GPU_PEAKS = (("H100", 989e12), ("H200", 989e12), ("A100", 312e12))
SYNTHETIC_TOKENS = 1 << 20  # enough distinct windows that no two steps see the same batch
DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice, for variants with run.threads 0


def mfu(flops_per_tok: int, tokens_per_sec: float, peak_flops: float) -> float:
    """Model FLOPs utilization: achieved training FLOP/s over the device's peak."""
    return flops_per_tok * tokens_per_sec / peak_flops


def _time_matmul(a: torch.Tensor, b: torch.Tensor, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    a @ b
    _sync(device)
    return time.perf_counter() - start


def peak_size(device: torch.device, dtype: torch.dtype, n: int = 2048, min_seconds: float = 0.05) -> int:
    """The matmul size to time: doubled from 256 until one product takes `min_seconds`, at most `n`.

    A fast dtype reaches `n` (2048: about 0.1 s in fp32 on 2 CPU cores); one the CPU has no instructions
    for (bf16 without AVX512-BF16 runs ~400x slower) stops small, so measuring its peak takes a second,
    not minutes.
    """
    size = min(256, n)
    while size < n:
        a = torch.randn(size, size, device=device).to(dtype)
        a @ a  # first call pays for kernel selection and page faults
        if _time_matmul(a, a, device) >= min_seconds:
            break
        size *= 2
    return min(size, n)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the fastest of `repeats` square matmuls in `dtype` on `device`, of size `peak_size` (<= n).

    The best, not the median: the peak is what the hardware can do, and a busy machine only
    ever makes a matmul slower.
    """
    n = peak_size(device, dtype, n)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # first call pays for kernel selection and page faults
    best = min(_time_matmul(a, b, device) for _ in range(repeats))
    return 2 * n**3 / best


def gpu_peak(name: str) -> float | None:
    """Data-sheet dense bf16 FLOP/s of a GPU by its torch.cuda.get_device_name, None when unknown."""
    for key, peak in GPU_PEAKS:
        if key in name:
            return peak
    return None


def device_peak(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """Peak FLOP/s to compute MFU against, and where the figure comes from."""
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak(name)
        if peak is not None:
            return peak, f"{name} data sheet, dense bf16"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        threads = torch.get_num_threads()
        name = f"cpu with {threads} thread{'s' if threads > 1 else ''}"
    return matmul_peak(device, dtype), f"{name}: measured {str(dtype).removeprefix('torch.')} matmul"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tensor_bytes(tensors: Any) -> int:
    """Bytes of the distinct tensor storages in `tensors` (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


@dataclass
class Variant:
    """One configuration under test, built as the trainer builds it."""

    label: str
    cfg: Config
    device: torch.device
    dtype: torch.dtype
    model: CausalLM
    forward_model: Callable[..., Any]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    sampler: RandomWindowSampler
    fetch: FetchFn  # (step, micro) -> batch: the sampler's, or a CUDA prefetcher's, as in training
    flops_per_token: int
    tokens_per_step: int
    step_s: list[float] = field(default_factory=list)
    data_s: list[float] = field(default_factory=list)
    first_step_s: float = 0.0  # includes torch.compile's compilation when run.compile is set
    resident_bytes: int = 0  # CUDA: allocated after warm-up (weights, optimizer state), for peak accounting
    peak_bytes: int = 0
    steps_done: int = 0

    def step(self) -> None:
        """One optimizer step through train_step; records step time and time spent fetching batches."""
        waited = 0.0
        index = self.steps_done

        def next_batch(micro: int) -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal waited
            start = time.perf_counter()
            x, y = self.fetch(index, micro)  # (B, T) each
            waited += time.perf_counter() - start
            return x, y

        set_lr(self.optimizer, lr_at(index, self.cfg.train))
        # The thread count is process-wide, and interleaved variants may each want their own.
        torch.set_num_threads(self.cfg.run.threads or DEFAULT_THREADS)
        _sync(self.device)
        start = time.perf_counter()
        train_step(self.forward_model, self.optimizer, self.scaler, next_batch,
                   self.cfg.train.grad_accum_steps, self.device, self.dtype, self.cfg.train.grad_clip)
        _sync(self.device)
        self.step_s.append(time.perf_counter() - start)
        self.data_s.append(waited)
        self.steps_done += 1


def synthetic_tokens(vocab_size: int, seed: int) -> np.ndarray:
    """Uniform random token ids: the model's cost does not depend on what the tokens say."""
    dtype = np.uint16 if vocab_size <= 1 << 16 else np.uint32
    return np.random.default_rng(seed).integers(0, vocab_size, SYNTHETIC_TOKENS).astype(dtype)


def load_tokens(cfg: Config, synthetic: bool) -> tuple[np.ndarray, int]:
    """Training tokens and vocabulary size: the data pipeline's, or random ones of the config's size."""
    if synthetic:
        vocab, _ = resolve_vocab(cfg)
        return synthetic_tokens(vocab, cfg.run.seed), vocab
    from albert_gpt.data.pipeline import prepare_data  # imports the tokenizer and data stack

    data = prepare_data(cfg, progress=False)
    return data.splits["train"].tokens, data.tokenizer.vocab_size


def build_variant(label: str, cfg: Config, tokens: np.ndarray, vocab_size: int) -> Variant:
    """Model, optimizer and sampler for `cfg`, as `training.trainer.build_run` makes them."""
    device = resolve_device(cfg.run)
    dtype = resolve_dtype(cfg.run, device)
    cfg = cfg.with_vocab(vocab_size)
    seed_everything(cfg.run.seed)
    model = build_model(cfg.model).to(device)
    t = cfg.train
    sampler = RandomWindowSampler(tokens, cfg.model.block_size, t.batch_size, cfg.run.seed)
    return Variant(
        label=label, cfg=cfg, device=device, dtype=dtype, model=model,
        forward_model=torch.compile(model) if cfg.run.compile else model,
        optimizer=build_optimizer(model, t, device),
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        sampler=sampler,
        fetch=sampler.batch,
        flops_per_token=flops_per_token(cfg.model),
        tokens_per_step=t.batch_size * t.grad_accum_steps * cfg.model.block_size,
    )


def parse_compare(specs: list[str]) -> list[tuple[str, list[str]]]:
    """`--compare KEY=V1,V2` (repeatable) -> one (label, overrides) per combination, first values first."""
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        choices = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or len(choices) < 1:
            raise ConfigError(f"--compare {spec!r}: expected KEY=V1,V2 (e.g. run.dtype=float32,bfloat16)")
        axes.append([f"{key.strip()}={v}" for v in choices])
    if not axes:
        return [("config", [])]
    return [(" ".join(combo), list(combo)) for combo in itertools.product(*axes)]


def parse_variants(specs: list[str]) -> list[tuple[str, list[str]]]:
    """`--variant "KEY=V KEY=V"` (repeatable) -> one (label, overrides) per flag, in order.

    For pairs that are not a product of axes, e.g. plain fp32 eager against bf16 compiled.
    An empty spec is the config as it is.
    """
    variants = []
    for spec in specs:
        overrides = spec.split()
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key or not value:
                raise ConfigError(f"--variant {spec!r}: {item!r} is not KEY=VALUE "
                                  "(e.g. --variant 'run.dtype=bfloat16 run.compile=true')")
        variants.append((" ".join(overrides) or "config", overrides))
    return variants


def measure_saved_activations(variant: Variant) -> int:
    """Bytes of the tensors autograd saves for backward in one forward pass (CPU memory estimate)."""
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x, y = variant.sampler.batch(0)  # (B, T) each
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(variant.device, variant.dtype):
        _, loss = variant.model(x.to(variant.device), y.to(variant.device))
    params = {p.untyped_storage().data_ptr() for p in variant.model.parameters()}
    del loss
    return sum(n for ptr, n in saved.items() if ptr not in params)


def cpu_peak_bytes(variant: Variant) -> int:
    """Counted, not sampled: weights + one gradient per weight + optimizer state + saved activations.

    An upper bound on the tensors alive at once during a step (gradients grow while saved
    activations are freed during backward); allocator caches and kernel workspaces excluded.
    """
    params = list(variant.model.parameters())
    state = [t for s in variant.optimizer.state.values() for t in s.values()]
    grads = sum(p.numel() * p.element_size() for p in params)
    return tensor_bytes(params) + grads + tensor_bytes(state) + measure_saved_activations(variant)


def run_benchmark(variants: list[Variant], steps: int, warmup: int,
                  on_step: Callable[[int], None] | None = None) -> None:
    """Warm every variant up, then take `steps` timed steps per variant, round-robin."""
    for v in variants:
        for i in range(max(1, warmup)):
            v.step()
            if i == 0:
                v.first_step_s = v.step_s[0]
        if v.device.type == "cuda":
            v.resident_bytes = torch.cuda.memory_allocated(v.device)
            v.resident_bytes -= sum(o.resident_bytes for o in variants if o is not v)
        v.step_s.clear()
        v.data_s.clear()
    for i in range(steps):
        for v in variants:
            if v.device.type == "cuda":
                others = torch.cuda.memory_allocated(v.device) - v.resident_bytes
                torch.cuda.reset_peak_memory_stats(v.device)
                v.step()
                v.peak_bytes = max(v.peak_bytes, torch.cuda.max_memory_allocated(v.device) - others)
            else:
                v.step()
        if on_step is not None:
            on_step(i)
    for v in variants:
        if v.device.type != "cuda":
            v.peak_bytes = cpu_peak_bytes(v)


def summarize(v: Variant, peak_flops: float, peak_source: str) -> dict[str, Any]:
    """The figures of one variant, from its timed steps."""
    step = statistics.median(v.step_s)
    tokens_per_sec = v.tokens_per_step / step
    return {
        "variant": v.label,
        "device": str(v.device),
        "dtype": str(v.dtype).removeprefix("torch."),
        "compile": v.cfg.run.compile,
        "batch_size": v.cfg.train.batch_size,
        "tokens_per_step": v.tokens_per_step,
        "steps": len(v.step_s),
        "step_ms": step * 1e3,
        "step_ms_iqr": _iqr(v.step_s) * 1e3,
        "first_step_s": v.first_step_s,
        "tokens_per_sec": tokens_per_sec,
        "flops_per_token": v.flops_per_token,
        "achieved_flops": v.flops_per_token * tokens_per_sec,
        "peak_flops": peak_flops,
        "peak_source": peak_source,
        "mfu": mfu(v.flops_per_token, tokens_per_sec, peak_flops),
        "peak_memory_mb": v.peak_bytes / 2**20,
        "memory_method": "cuda max_memory_allocated during the variant's steps, less other variants' "
                         "resident tensors" if v.device.type == "cuda" else
                         "counted: weights + gradients + optimizer state + saved activations",
        "data_wait_share": sum(v.data_s) / sum(v.step_s),
    }


def _iqr(values: list[float]) -> float:
    if len(values) < 4:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Throughput and memory of each row relative to the first (the baseline)."""
    base = rows[0]
    for row in rows:
        row["speedup"] = row["tokens_per_sec"] / base["tokens_per_sec"]
        base_mb = base["peak_memory_mb"]
        row["memory_ratio"] = row["peak_memory_mb"] / base_mb if base_mb else None


def benchmark(config: str, overrides: list[str], compare: list[str], steps: int, warmup: int,
              synthetic: bool, variants: list[str] | None = None) -> list[dict[str, Any]]:
    """Build the variants of `config`, time them interleaved, and return one summary row each.

    Variants come from `compare` (every combination) or from `variants` (one per spec), not both.
    """
    if compare and variants:
        raise ConfigError("--compare and --variant both given: use one way to name the variants")
    specs = parse_variants(variants) if variants else parse_compare(compare)
    configs = [(label, load_config(config, overrides + extra)) for label, extra in specs]
    # Variants differ in how they compute, never in what data they see: load it once.
    tokens, vocab = load_tokens(configs[0][1], synthetic)
    built = [build_variant(label, cfg, tokens, vocab) for label, cfg in configs]
    with contextlib.ExitStack() as prefetchers:
        for v in built:  # on CUDA, batches are prepared ahead as the trainer prepares them
            v.fetch = prefetchers.enter_context(batch_source(
                v.sampler, v.cfg.train.grad_accum_steps, 0, max(1, warmup) + steps, v.device))
        run_benchmark(built, steps, warmup)
    peaks: dict[tuple[str, torch.dtype, int], tuple[float, str]] = {}
    rows = []
    for v in built:
        threads = v.cfg.run.threads or DEFAULT_THREADS
        key = (str(v.device), v.dtype, threads)
        if key not in peaks:
            torch.set_num_threads(threads)  # a CPU peak is that of the threads the variant ran on
            peaks[key] = device_peak(v.device, v.dtype)
        rows.append(summarize(v, *peaks[key]))
    add_ratios(rows)
    machine = machine_info(built[0].device)
    for row, (_, extra) in zip(rows, specs):
        row["machine"] = machine
        row["torch_version"] = torch.__version__
        row["settings"] = {"config": str(config), "overrides": [*overrides, *extra], "steps": steps,
                           "warmup": warmup, "synthetic": synthetic}
    return rows


def _pad(cell: str, width: int, left: bool) -> str:
    return cell.ljust(width) if left else cell.rjust(width)


def format_table(rows: list[dict[str, Any]]) -> str:
    """One aligned line per variant."""
    head = ("variant", "ms/step", "tok/s", "TFLOP/s", "MFU", "peak MB", "data", "x tok/s", "x mem")
    table = [head]
    for r in rows:
        table.append((
            r["variant"], f"{r['step_ms']:.2f}", f"{r['tokens_per_sec']:,.0f}",
            f"{r['achieved_flops'] / 1e12:.3f}", f"{100 * r['mfu']:.1f}%", f"{r['peak_memory_mb']:,.1f}",
            f"{100 * r['data_wait_share']:.1f}%", f"{r['speedup']:.2f}",
            "-" if r["memory_ratio"] is None else f"{r['memory_ratio']:.2f}",
        ))
    widths = [max(len(row[c]) for row in table) for c in range(len(head))]
    lines = ["  ".join(_pad(cell, w, c == 0) for c, (cell, w) in enumerate(zip(row, widths)))
             for row in table]
    peaks = dict.fromkeys(f"{r['peak_source']} = {r['peak_flops'] / 1e12:.3f} TFLOP/s" for r in rows)
    lines.append(f"medians of {rows[0]['steps']} interleaved steps; FLOPs/token "
                 + ", ".join(dict.fromkeys(f"{r['flops_per_token']:,}" for r in rows)))
    lines.append("MFU against " + "; ".join(peaks))
    lines.append("data = share of step time fetching batches; x = ratio to the first row")
    return "\n".join(lines)
