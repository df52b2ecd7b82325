"""`albert-gpt info`: parameter counts, FLOPs per token and the vocabulary it counts with."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from albert_gpt.config import ModelConfig, load_config
from albert_gpt.errors import ConfigError
from albert_gpt.modeling.counting import count_parameters, flops_per_token
from albert_gpt.modeling.model import AlbertGPT
from albert_gpt.study.info import format_info, model_info

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
H, V, T, L = 16, 23, 10, 4
BLOCK = 12 * H * H + 13 * H  # qkv, out, up, down projections with biases, two LayerNorms


def test_flops_per_token_matches_formula_by_hand():
    """6 * (applied parameters without positions) + 12 * L * H * T, for a shared and a factorized model."""
    cfg = ModelConfig(n_layers=L, n_embd=H, n_heads=2, block_size=T, vocab_size=V)
    assert flops_per_token(cfg) == 6 * (V * H + L * BLOCK) + 12 * L * H * T
    E = 4
    factorized = ModelConfig(n_layers=L, n_embd=H, n_heads=2, block_size=T, vocab_size=V, embedding_dim=E)
    n = V * E + (E * H + H) + L * BLOCK + (H * E + E)
    assert flops_per_token(factorized) == 6 * n + 12 * L * H * T


def test_gpt2_small_shape_matches_nanogpt_count():
    """GPT-2 small in nanoGPT's layout (pre-LN, unshared, vocab 50304) has 124,475,904 parameters."""
    cfg = load_config(
        None,
        [
            "model.n_layers=12",
            "model.n_groups=12",
            "model.n_embd=768",
            "model.n_heads=12",
            "model.block_size=1024",
            "model.vocab_size=50304",
            "model.norm_placement=pre",
        ],
    )
    info = model_info(cfg)
    assert info["params_unique"] == 124_475_904
    # Sharing the block keeps the applied count (and FLOPs) and divides the block parameters by 12.
    shared = model_info(
        load_config(
            None,
            [
                "model.n_layers=12",
                "model.n_groups=1",
                "model.n_embd=768",
                "model.n_heads=12",
                "model.block_size=1024",
                "model.vocab_size=50304",
                "model.norm_placement=pre",
            ],
        )
    )
    assert shared["params_applied"] == info["params_applied"] == info["params_unique"]
    assert shared["flops_per_token"] == info["flops_per_token"]
    assert info["params_unique"] - shared["params_unique"] == 11 * (12 * 768 * 768 + 13 * 768)


def test_missing_vocab_is_a_config_error():
    """flops_per_token needs model.vocab_size."""
    with pytest.raises(ConfigError, match="model.vocab_size"):
        flops_per_token(ModelConfig(n_embd=H, n_heads=2))


def test_vocab_resolution_without_a_trained_tokenizer():
    """model.vocab_size wins; else the BPE target (noted) or 256 for char (noted)."""
    explicit = model_info(load_config(None, ["model.vocab_size=100", "model.pad_vocab_multiple=64"]))
    assert (explicit["vocab_size"], explicit["vocab_note"], explicit["padded_vocab_size"]) == (100, None, 128)
    bpe = model_info(load_config(None, ["tokenizer.vocab_size=3000"]))
    assert bpe["vocab_size"] == 3000 and "target" in bpe["vocab_note"]
    char = model_info(load_config(None, ["tokenizer.type=char"]))
    assert char["vocab_size"] == 256 and "char" in char["vocab_note"]


def test_pretrained_tokenizer_vocab_read_from_file(tmp_path):
    """tokenizer.type=pretrained counts with the real tokenizer.json's size; a missing file is an error."""
    vocab = {w: i for i, w in enumerate(["<unk>", "a", "b", "c", "d", "e", "f"])}
    path = tmp_path / "tokenizer.json"
    Tokenizer(WordLevel(vocab, unk_token="<unk>")).save(str(path))
    info = model_info(load_config(None, ["tokenizer.type=pretrained", f"tokenizer.path={path}"]))
    assert info["vocab_size"] == 7
    with pytest.raises(ConfigError, match="tokenizer.path"):
        model_info(load_config(None, ["tokenizer.type=pretrained", f"tokenizer.path={tmp_path / 'no.json'}"]))


@pytest.mark.parametrize(
    "sets",
    [
        ["model.sharing=all", "model.n_groups=2"],
        ["model.sharing=attention", "model.n_groups=2"],
        ["model.sharing=ffn", "model.embedding_dim=8", "model.norm_placement=pre"],
    ],
)
def test_meta_counts_equal_a_real_model_and_breakdown_sums(sets):
    """model_info (meta device) equals count_parameters of a materialized model; rows add up."""
    base = [
        "model.n_layers=4",
        f"model.n_embd={H}",
        "model.n_heads=2",
        f"model.block_size={T}",
        f"model.vocab_size={V}",
    ]
    cfg = load_config(None, base + sets)
    info = model_info(cfg)
    real = count_parameters(AlbertGPT(cfg.model))
    assert (info["params_unique"], info["params_applied"]) == (real["params_unique"], real["params_applied"])
    assert sum(r["params"] for r in info["breakdown"]) == info["params_unique"]
    assert sum(r["applied"] for r in info["breakdown"]) == info["params_applied"]
    assert (
        sum(
            r["applications"]
            for r in info["breakdown"]
            if "attention" in r["component"] or "block" in r["component"]
        )
        == 4
    )


def test_partial_sharing_breakdown_names_shared_and_per_layer_rows():
    """sharing=attention: shared attention rows (x group size) and one FFN row per layer."""
    cfg = load_config(
        None,
        [
            "model.n_layers=4",
            "model.n_groups=2",
            "model.sharing=attention",
            f"model.n_embd={H}",
            "model.n_heads=2",
            f"model.vocab_size={V}",
        ],
    )
    rows = {r["component"]: r["applications"] for r in model_info(cfg)["breakdown"]}
    assert rows["shared attention + norm (layers 0-1)"] == 2
    assert rows["shared attention + norm (layers 2-3)"] == 2
    assert [rows[f"ffn + norm (layer {i})"] for i in range(4)] == [1, 1, 1, 1]


def test_format_info_is_an_aligned_table():
    """The text output right-aligns the numeric columns and states the totals and FLOPs."""
    info = model_info(load_config(None, ["model.vocab_size=1000"]))
    text = format_info(info)
    table = text.split("\n\n")[1].splitlines()
    rows = [line for line in table if not line.startswith("-")]
    assert len({len(line) for line in rows}) == 1  # every row ends at the same column
    assert f"unique parameters   {info['params_unique']:,}" in text
    assert f"FLOPs per token     {info['flops_per_token']:,}" in text


def _shipped_overrides(path: Path) -> list[str]:
    """The data path a shipped config's usage line asks for, when the file leaves it out."""
    data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    return ["data.path=corpus.txt"] if data.get("source") == "files" and not data.get("path") else []


def test_cli_info_json_on_a_shipped_config():
    """`python -m albert_gpt info CONFIG --json` prints one JSON object with the counts model_info gives."""
    path = CONFIGS / "shakespeare_char_cpu.yaml"
    if not path.is_file():
        path = sorted(CONFIGS.glob("*.yaml"))[0]
    overrides = _shipped_overrides(path)
    args = [arg for o in overrides for arg in ("--set", o)]
    result = subprocess.run(
        [sys.executable, "-m", "albert_gpt", "info", str(path), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    expected = model_info(load_config(path, overrides))
    for key in ("params_unique", "params_applied", "flops_per_token"):
        assert out[key] == expected[key]


def test_every_shipped_config_has_info():
    """model_info works on every YAML in configs/: applied >= unique > 0, FLOPs from the applied count."""
    paths = sorted(CONFIGS.glob("*.yaml"))
    assert paths
    for path in paths:
        info = model_info(load_config(path, _shipped_overrides(path)))
        assert info["params_applied"] >= info["params_unique"] > 0, path.name
        L, H, T = info["n_layers"], info["n_embd"], info["block_size"]
        if info["arch"] == "transformer":  # positions are a lookup; attention adds score and value matmuls
            assert info["flops_per_token"] == 6 * (info["params_applied"] - T * H) + 12 * L * H * T, path.name
        else:  # no positions, no attention: each weight used once per token
            assert info["flops_per_token"] == 6 * info["params_applied"], path.name
