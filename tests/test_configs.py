"""Every YAML under configs/ loads and builds, and the shipped recipes are what their comments say."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import pytest
import yaml

from albert_gpt.config import Config, load_config
from albert_gpt.modeling.base import padded_vocab_size
from albert_gpt.study.info import model_info
from albert_gpt.study.sweep import cell_config, load_sweep

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
RECIPES = ["quickstart", "shakespeare_char", "shakespeare_char_cpu", "gpt2_small_shared"]  # this file's own


def _usage(path: Path) -> list[str] | None:
    """The arguments of the file's `# usage:` comment line, if it has one."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# usage:"):
            return shlex.split(line.removeprefix("# usage:"))
    return None


def _load(path: Path) -> Config:
    args = _usage(path) or []
    overrides = [args[i + 1] for i, arg in enumerate(args) if arg == "--set"]
    return load_config(path, overrides)


def _is_sweep(path: Path) -> bool:
    return "grid" in (yaml.safe_load(path.read_text(encoding="utf-8")) or {})


def test_configs_are_found():
    """The glob sees the shipped configs (an empty parametrization would pass silently)."""
    names = {p.name for p in CONFIGS}
    assert {f"{name}.yaml" for name in RECIPES} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_loads_and_its_model_builds(path):
    """Each config (with the --set values of its usage line) validates and its model has parameters;
    each sweep file expands into cells that all validate."""
    if _is_sweep(path):
        sweep = load_sweep(path)
        assert sweep.cells
        for cell in sweep.cells:
            assert isinstance(cell_config(sweep, cell), Config)
        return
    info = model_info(_load(path))
    assert info["params_unique"] > 0 and info["params_applied"] >= info["params_unique"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_starts_with_a_comment_block(path):
    """Each file opens with a comment saying what it is for."""
    assert path.read_text(encoding="utf-8").startswith("#")


@pytest.mark.parametrize("name", RECIPES)
def test_usage_line_trains_this_file(name):
    """The documented command of a shipped recipe is `albert-gpt train configs/<this file>`."""
    args = _usage(CONFIG_DIR / f"{name}.yaml")
    assert args[:3] == ["albert-gpt", "train", f"configs/{name}.yaml"]


def test_quickstart_is_offline_post_ln_and_all_shared():
    """The quickstart uses the builtin corpus, a BPE tokenizer, post-LN and one shared block, on the CPU."""
    cfg = _load(CONFIG_DIR / "quickstart.yaml")
    assert (cfg.data.source, cfg.tokenizer.type, cfg.run.device) == ("builtin", "bpe", "cpu")
    assert (cfg.model.norm_placement, cfg.model.norm, cfg.model.n_groups) == ("post", "layernorm", 1)


def test_shakespeare_recipes_match_nanogpt():
    """The CPU and GPU Shakespeare configs carry nanoGPT's recipe sizes (docs/design.md 8), char-level."""
    cpu = _load(CONFIG_DIR / "shakespeare_char_cpu.yaml")
    gpu = _load(CONFIG_DIR / "shakespeare_char.yaml")
    m, t = cpu.model, cpu.train
    assert (m.n_layers, m.n_heads, m.n_embd, m.block_size, m.dropout) == (4, 4, 128, 64, 0.0)
    assert (t.batch_size, t.max_steps) == (12, 2000)  # nanoGPT's budget; lr and warmup from the ablation
    assert (t.lr, t.warmup_steps, m.norm_per_depth_affine) == (3e-3, 400, True)  # docs/performance.md
    m, t = gpu.model, gpu.train
    assert (m.n_layers, m.n_heads, m.n_embd, m.block_size, m.dropout) == (6, 6, 384, 256, 0.2)
    assert (t.batch_size, t.max_steps, t.lr) == (64, 5000, 1e-3)
    for cfg in (cpu, gpu):
        assert (cfg.data.source, cfg.tokenizer.type, cfg.model.n_groups) == ("url", "char", 1)


def test_every_tiny_shakespeare_config_names_the_same_file_by_url_and_checksum():
    """Every recipe downloads char-rnn's input.txt and pins its SHA-256 (the file of 1,115,394 bytes)."""
    configs = ["shakespeare_char_cpu", "shakespeare_char", "lstm_char_cpu", "conv_char_cpu"]
    sources = {(c.data.url, c.data.sha256) for c in (_load(CONFIG_DIR / f"{n}.yaml") for n in configs)}
    assert sources == {(
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    )}


def test_gpt2_small_shared_shape():
    """12 applications of one 768-wide block, 12 heads, context 1024, GPT-2's vocabulary padded to 50304."""
    cfg = _load(CONFIG_DIR / "gpt2_small_shared.yaml")
    m = cfg.model
    assert (m.n_layers, m.n_groups, m.n_embd, m.n_heads, m.block_size) == (12, 1, 768, 12, 1024)
    assert padded_vocab_size(dataclasses.replace(m, vocab_size=cfg.tokenizer.vocab_size)) == 50304
    assert (cfg.run.dtype, cfg.run.compile) == ("bfloat16", True)
