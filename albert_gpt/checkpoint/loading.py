"""From a checkpoint to a model: whether a checkpoint fits a config, and a model and tokenizer
ready for inference. Nothing here imports training code, so evaluation and generation can load
runs on their own.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from albert_gpt.checkpoint.store import (
    CONFIG_FILE,
    FREE_MODEL_KEYS,
    MODEL_FILE,
    TOKENIZER_FILE,
    read_manifest,
    reading_checkpoint,
)
from albert_gpt.checkpoint.weights import load_strict, load_weights
from albert_gpt.config import Config, load_config
from albert_gpt.data.tokenizer import TextTokenizer
from albert_gpt.errors import CheckpointError, ConfigError
from albert_gpt.modeling.base import CausalLM
from albert_gpt.modeling.factory import build_model


def check_compatible(saved_cfg: Config, cfg: Config, source: Path | None = None) -> None:
    """CheckpointError naming the first model key whose value differs between a checkpoint and a config
    (keys that neither shape nor change the computation, like dropout, may differ)."""
    saved, current = saved_cfg.model, cfg.model
    for f in dataclasses.fields(saved):
        if f.name in FREE_MODEL_KEYS:  # resuming with another value is legitimate
            continue
        old, new = getattr(saved, f.name), getattr(current, f.name)
        if f.name == "embedding_dim":  # null means n_embd
            old, new = old or saved.n_embd, new or current.n_embd
        if f.name == "vocab_size" and (old is None or new is None):  # filled in from the tokenizer later
            continue
        if old != new:
            where = f" ({source})" if source is not None else ""
            raise CheckpointError(
                f"checkpoint does not match the config: model.{f.name} is {old} in the checkpoint, "
                f"{new} in the config{where}"
            )


def require_run_dir(run_dir: Path) -> Path:
    """`run_dir` when it is a run directory (it holds config.yaml or checkpoints/); otherwise a
    ConfigError that says what the path is instead and what to give: a missing path, a file (a config
    to train), a folder of runs (naming them), an exported Hugging Face folder."""
    run_dir = Path(run_dir)
    if run_dir.is_dir() and ((run_dir / CONFIG_FILE).is_file() or (run_dir / "checkpoints").is_dir()):
        return run_dir
    if not run_dir.exists():
        raise ConfigError(f"run directory not found: {run_dir}")
    if not run_dir.is_dir():
        hint = (f"; to train from it: albert-gpt train {run_dir}" if run_dir.suffix in (".yaml", ".yml")
                else "")
        raise ConfigError(f"{run_dir} is a file, not a run directory (a run directory is "
                          f"run.out_dir/run.name, e.g. runs/quickstart){hint}")
    if (run_dir / "config.json").is_file() and (run_dir / "model.safetensors").is_file():
        raise ConfigError(f"{run_dir} is an exported Hugging Face folder, not a run directory: load it "
                          "with transformers (AutoModelForCausalLM.from_pretrained(path, "
                          "trust_remote_code=True)), or give the run it was exported from")
    runs = sorted(p.name for p in run_dir.iterdir()
                  if p.is_dir() and ((p / CONFIG_FILE).is_file() or (p / "checkpoints").is_dir()))
    if runs:
        shown = ", ".join(str(run_dir / name) for name in runs[:5]) + (", ..." if len(runs) > 5 else "")
        raise ConfigError(f"{run_dir} is a folder of runs, not a run directory: give one of {shown}")
    raise ConfigError(f"{run_dir} is not a run directory (no {CONFIG_FILE} and no checkpoints/ in it)")


def load_for_inference(
    run_dir: Path, checkpoint: str | None = None, device: str | torch.device = "cpu",
) -> tuple[Config, CausalLM, TextTokenizer]:
    """(cfg, model in eval mode, tokenizer) from a run directory's chosen checkpoint."""
    loaded = load_run_checkpoint(run_dir, checkpoint, device)
    return loaded.cfg, loaded.model, loaded.tokenizer


@dataclasses.dataclass
class LoadedCheckpoint:
    path: Path  # the checkpoint folder used
    cfg: Config
    model: CausalLM  # in eval mode
    tokenizer: TextTokenizer
    meta: dict[str, Any]  # its verified manifest (step, val_loss, files)


def load_run_checkpoint(
    run_dir: Path, checkpoint: str | None = None, device: str | torch.device = "cpu",
) -> LoadedCheckpoint:
    """A run's chosen checkpoint, loaded. It is held while it is read, so a run being trained does not
    rotate it away half way."""
    with reading_checkpoint(Path(run_dir), checkpoint) as path:
        meta = read_manifest(path)  # verified by the choice; held since, so unchanged
        cfg = load_config(path / CONFIG_FILE)
        if cfg.model.vocab_size is None:
            raise CheckpointError(f"{path / CONFIG_FILE}: model.vocab_size is not set")
        model = build_model(cfg.model).to(device)
        load_strict(model, load_weights(path / MODEL_FILE, device), path / MODEL_FILE)
        tokenizer_file = path / TOKENIZER_FILE
        if not tokenizer_file.is_file():
            tokenizer_file = Path(run_dir) / TOKENIZER_FILE
        if not tokenizer_file.is_file():
            raise CheckpointError(f"{path}: no {TOKENIZER_FILE} in the checkpoint or the run directory")
        tokenizer = TextTokenizer.load(tokenizer_file, eot_token=cfg.tokenizer.eot_token)
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise CheckpointError(f"{tokenizer_file}: {tokenizer.vocab_size} tokens, but the model was trained "
                              f"with model.vocab_size {cfg.model.vocab_size}")
    return LoadedCheckpoint(path, cfg, model.eval(), tokenizer, meta)
