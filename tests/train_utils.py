"""Shared by the trainer tests: a tiny corpus written to tmp_path and a tiny CPU config for it."""

from __future__ import annotations

import random
import signal
from pathlib import Path
from typing import Any

import yaml

from albert_gpt.config import Config, config_from_dict

_WORDS = "the cat dog sat ran on a mat log and then saw big red small blue".split()


def write_corpus(directory: Path, n_lines: int = 600) -> Path:
    """Short sentences from a small vocabulary: structured enough that loss falls within a few steps."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 9))) + "." for _ in range(n_lines)]
    path = directory / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_raw(tmp_path: Path, **sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The nested mapping of a 2-layer, 32-wide, context-16 char model on the tiny corpus."""
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        write_corpus(tmp_path)
    raw: dict[str, dict[str, Any]] = {
        "run": {"name": "tiny", "out_dir": str(tmp_path / "runs"), "device": "cpu", "dtype": "float32",
                "seed": 0, "threads": 1},
        "data": {"source": "files", "path": str(corpus), "cache_dir": str(tmp_path / "cache"),
                 "val_fraction": 0.1, "test_fraction": 0.1},
        "tokenizer": {"type": "char"},
        "model": {"n_layers": 2, "n_embd": 32, "n_heads": 2, "block_size": 16},
        "train": {"batch_size": 4, "max_steps": 20, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2,
                  "checkpoint_interval": 10},
        "eval": {"interval": 10, "batches": 2, "sample_tokens": 8},
        "log": {"interval": 5, "progress": False},
    }
    for name, values in sections.items():
        raw[name].update(values)
    return raw


def tiny_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    return config_from_dict(tiny_raw(tmp_path, **sections))


def write_config(tmp_path: Path, **sections: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_raw(tmp_path, **sections)), encoding="utf-8")
    return path


def stop_at(monkeypatch, sampler_class: type, step: int) -> None:
    """Deliver a real SIGTERM to this process while the batch of step `step` (1-based) is drawn from
    `sampler_class` (RandomWindowSampler, or StreamBatches when streaming)."""
    original = sampler_class.batch

    def batch(self, index, micro_step=0):
        if index == step - 1 and micro_step == 0:
            signal.raise_signal(signal.SIGTERM)
        return original(self, index, micro_step)

    monkeypatch.setattr(sampler_class, "batch", batch)
