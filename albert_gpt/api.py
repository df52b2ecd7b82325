"""The Python API: what the command line does, as functions (the package root re-exports them).

from albert_gpt import load_config, train, load_run, evaluate, generate, enable_logging, CSVLogger

enable_logging()                                   # the library logs through "albert_gpt" (silent by default)
cfg = load_config("configs/quickstart.yaml", ["train.max_steps=200", "run.name=api_demo"])
result = train(cfg, callbacks=[CSVLogger()])       # a run directory, as `albert-gpt train` makes
run = load_run(cfg.run_dir)                        # config, model (eval mode) and tokenizer
evaluate(run)["perplexity"]                        # the validation split; evaluate(run, text="f.txt")
generate(run, "The with statement", max_new_tokens=40, seed=1)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from albert_gpt.config import Config, load_config
from albert_gpt.training.callbacks import CSVLogger, TrainingCallback

if TYPE_CHECKING:  # imported for real on first use: the API's import stays light
    import torch

    from albert_gpt.data.tokenizer import TextTokenizer
    from albert_gpt.modeling.base import CausalLM

__all__ = [
    "CSVLogger",
    "LoadedRun",
    "TrainingCallback",
    "enable_logging",
    "evaluate",
    "generate",
    "load_config",
    "load_run",
    "train",
]

LOGGER = "albert_gpt"


def enable_logging(level: int = logging.INFO) -> logging.Logger:
    """Show the library's log messages on stderr (progress notes, evaluations, warnings). The library
    itself only adds a NullHandler, so nothing prints unless the application (or this call) asks."""
    logger = logging.getLogger(LOGGER)
    if not any(getattr(h, "_albert_gpt", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._albert_gpt = True  # type: ignore[attr-defined]  # so a second call adds no second handler
        logger.addHandler(handler)
    logger.setLevel(level)
    return logger


def train(
    config: Config | str | Path,
    resume: bool = False,
    callbacks: list[TrainingCallback] | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Train from a Config or a YAML file (with `section.key=value` overrides); returns the final metrics."""
    from albert_gpt.training.trainer import train as run_training

    cfg = config if isinstance(config, Config) else load_config(config, overrides or [])
    return run_training(cfg, resume=resume, callbacks=callbacks or [])


@dataclass
class LoadedRun:
    """A trained run in memory: its resolved config, its model (eval mode) and its tokenizer."""

    run_dir: Path
    checkpoint: str | None
    cfg: Config
    model: CausalLM
    tokenizer: TextTokenizer
    device: torch.device
    dtype: torch.dtype


def load_run(
    run_dir: str | Path, checkpoint: str | None = None, device: str | None = None, dtype: str | None = None
) -> LoadedRun:
    """Load a run's checkpoint (best, else latest, unless named) on this machine's device (or `device`)."""
    from albert_gpt.checkpoint import load_for_inference
    from albert_gpt.inference.evaluate import inference_device

    torch_device, torch_dtype = inference_device(device, dtype)
    cfg, model, tokenizer = load_for_inference(Path(run_dir), checkpoint=checkpoint, device=torch_device)
    return LoadedRun(Path(run_dir), checkpoint, cfg, model, tokenizer, torch_device, torch_dtype)


def evaluate(
    run: LoadedRun | str | Path,
    split: str = "val",
    text: str | Path | None = None,
    stride: int | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Loss, perplexity and bits per byte of a run on one of its splits, or on a text file. A LoadedRun is
    evaluated as it is in memory; a run directory is loaded first (best checkpoint, this machine)."""
    from albert_gpt.inference.evaluate import evaluate_loaded, evaluate_run

    text_path = None if text is None else Path(text)
    if not isinstance(run, LoadedRun):
        return evaluate_run(
            Path(run), split=split, stride=stride, batch_size=batch_size, progress=progress, text=text_path
        )
    return evaluate_loaded(
        run.run_dir,
        run.cfg,
        run.model,
        run.tokenizer,
        run.device,
        run.dtype,
        split=split,
        text=text_path,
        stride=stride,
        batch_size=batch_size,
        progress=progress,
    )


def generate(
    run: LoadedRun | str | Path,
    prompt: str = "\n",
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 1337,
) -> str:
    """The text a run generates after `prompt` (the prompt not included); the same seed, the same text."""
    from albert_gpt.inference.generate import generate_text
    from albert_gpt.runtime import autocast

    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    with autocast(loaded.device, loaded.dtype):
        return generate_text(
            loaded.model,
            loaded.tokenizer,
            prompt,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            device=loaded.device,
        )
