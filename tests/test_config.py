"""Config loading: YAML round trip, typed --set overrides, one-line validation errors."""

import re
from pathlib import Path

import pytest
import yaml

from albert_gpt.config import (
    Config,
    ModelConfig,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
    save_config,
)
from albert_gpt.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_defaults_are_valid_and_match_design_keys():
    """A config with no file is the documented default: post-LN, all shared, LayerNorm."""
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert (cfg.model.norm, cfg.model.norm_placement, cfg.model.sharing) == ("layernorm", "post", "all")
    assert cfg.run_dir == Path("runs") / "run"


def test_round_trip_through_yaml(tmp_path):
    """Dumped then reloaded, a non-default config is identical, including nulls and floats."""
    raw = {
        "run": {"name": "rt", "seed": 7},
        "model": {
            "n_layers": 4,
            "n_groups": 2,
            "sharing": "ffn",
            "n_embd": 64,
            "n_heads": 4,
            "embedding_dim": 32,
            "norm": "rmsnorm",
            "norm_placement": "pre",
            "norm_affine": False,
        },
        "data": {"source": "files", "path": "corpus/*.txt", "max_documents": None},
        "train": {"lr": 3e-4, "min_lr": 3e-5, "max_tokens": 100_000},
        "eval": {"sample_prompt": "Once"},
    }
    cfg = config_from_dict(raw)
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert dump_config(again) == path.read_text()
    assert again.train.lr == 3e-4 and again.model.embedding_dim == 32 and again.data.max_documents is None
    assert not list(tmp_path.glob("*.tmp"))


def test_yaml_exponent_float_is_read_as_float(tmp_path):
    """`lr: 3e-4` (a string to YAML 1.1) becomes the float 0.0003."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 3e-4\n  min_lr: 1e-5\n")
    assert load_config(path).train.lr == pytest.approx(3e-4)


@pytest.mark.parametrize(
    "override, section, key, expected",
    [
        ("train.lr=3e-4", "train", "lr", 3e-4),
        ("model.n_layers=12", "model", "n_layers", 12),
        ("model.n_groups=1e0", "model", "n_groups", 1),
        ("train.batch_size=1_024", "train", "batch_size", 1024),
        ("model.embedding_dim=null", "model", "embedding_dim", None),
        ("model.embedding_dim=128", "model", "embedding_dim", 128),
        ("model.bias=false", "model", "bias", False),
        ("log.progress=no", "log", "progress", False),
        ("run.name=123", "run", "name", "123"),
        ("eval.sample_prompt=a=b", "eval", "sample_prompt", "a=b"),
    ],
)
def test_overrides_are_coerced_to_field_type(override, section, key, expected):
    """--set values (text) become the field's type: int, float, bool, str or null."""
    value = getattr(getattr(load_config(None, [override]), section), key)
    assert value == expected
    assert type(value) is type(expected)


def test_override_replaces_file_value(tmp_path):
    """An override wins over the YAML file and leaves the other keys of the section alone."""
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  n_layers: 4\n  n_embd: 64\n  n_heads: 4\n")
    cfg = load_config(path, ["model.n_layers=8"])
    assert (cfg.model.n_layers, cfg.model.n_embd) == (8, 64)


def test_apply_overrides_does_not_mutate_input():
    """apply_overrides returns a new mapping; the caller's dict is untouched."""
    raw = {"train": {"lr": 1e-3}}
    out = apply_overrides(raw, ["train.lr=2e-3"])
    assert raw == {"train": {"lr": 1e-3}} and out["train"]["lr"] == 2e-3


ERRORS = [
    ({"model": {"n_layer": 4}}, "unknown config key model.n_layer (did you mean model.n_layers?)"),
    ({"modle": {}}, "unknown config key modle (did you mean model?)"),
    ({"model": {"n_layers": "four"}}, "model.n_layers: expected int, got 'four'"),
    ({"model": {"n_layers": 2.5}}, "model.n_layers: expected int, got 2.5"),
    ({"model": {"bias": "maybe"}}, "model.bias: expected bool, got 'maybe'"),
    ({"run": {"name": 5}}, "run.name: expected str, got 5"),
    ({"model": {"dropout": 1.5}}, "model.dropout: 1.5 is out of range (must be <= 0.999)"),
    ({"model": {"n_layers": 0}}, "model.n_layers: 0 is out of range (must be >= 1)"),
    ({"train": {"lr": 0}}, "train.lr: 0.0 is out of range (must be > 0.0)"),
    ({"model": {"n_embd": 100, "n_heads": 3}}, "model.n_embd (100) must be divisible by model.n_heads (3)"),
    ({"model": {"n_layers": 6, "n_groups": 4}}, "model.n_groups (4) must divide model.n_layers (6)"),
    (
        {"model": {"n_embd": 64, "n_heads": 4, "embedding_dim": 128}},
        "model.embedding_dim (128) must be <= model.n_embd (64)",
    ),
    ({"model": {"norm": "weightnorm"}}, "model.norm: unknown value 'weightnorm' (choose one of: layernorm,"),
    (
        {"model": {"norm_placement": "sandwich"}},
        "model.norm_placement: unknown value 'sandwich' (choose one of: post, pre, deepnorm, none)",
    ),
    (
        {"model": {"sharing": "heads"}},
        "model.sharing: unknown value 'heads' (choose one of: all, attention, ffn)",
    ),
    ({"model": []}, "model: expected a mapping of keys, got []"),
]


@pytest.mark.parametrize("raw, message", ERRORS)
def test_validation_errors_name_the_key(raw, message):
    """Each invalid config raises ConfigError whose one-line message names the key and the problem."""
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    text = str(info.value)
    assert text.startswith(message)
    assert "\n" not in text


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=fast", "train.lr: expected float, got 'fast'"),
        ("model.n_layer=3", "unknown config key model.n_layer (did you mean model.n_layers?)"),
        ("lr=3e-4", "override 'lr=3e-4': key must be section.name"),
        ("train.lr", "override 'train.lr': expected KEY=VALUE"),
        ("model.n_layers=3.5", "model.n_layers: expected int, got '3.5'"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    """Overrides are checked like file values: unknown keys, bad types, malformed items."""
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        load_config(None, [override])


def test_bad_yaml_reports_file_and_line(tmp_path):
    """A YAML syntax error names the file and the line."""
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  n_layers: 4\n  n_embd: [64\n")
    with pytest.raises(ConfigError, match=r"broken.yaml line \d+"):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path):
    """A config path that does not exist raises ConfigError naming it."""
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def shipped_config(path: Path) -> Config:
    """A file from configs/, with the data path the usage line asks for when it has none."""
    data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    needs_path = data.get("source") == "files" and not data.get("path")
    return load_config(path, ["data.path=corpus.txt"] if needs_path else [])


def test_every_shipped_config_loads():
    """Each YAML in configs/ parses, validates and survives a dump/reload round trip."""
    paths = sorted(CONFIGS.glob("*.yaml"))
    assert paths, "configs/ holds no YAML files"
    for path in paths:
        cfg = shipped_config(path)
        assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg, path.name
        assert isinstance(cfg.model, ModelConfig)


def test_every_field_with_fixed_choices_is_a_literal_checked_on_load():
    """Choices live in the type: each Literal field refuses a value outside it, from YAML and from --set,
    and a non-string (a YAML number) is refused the same way."""
    import dataclasses as dc
    import typing

    from albert_gpt.config import SECTIONS, _field_types

    literal_fields = [(name, f.name, typing.get_args(_field_types(cls)[f.name]))
                      for name, cls in SECTIONS.items() for f in dc.fields(cls)
                      if typing.get_origin(_field_types(cls)[f.name]) is typing.Literal]
    assert ("model", "norm_placement", ("post", "pre", "deepnorm", "none")) in literal_fields
    assert len(literal_fields) >= 10
    for section, key, choices in literal_fields:
        loaded = load_config(None, [f"{section}.{key}={choices[0]}"])
        assert getattr(getattr(loaded, section), key) == choices[0]
        with pytest.raises(ConfigError, match=rf"^{section}\.{key}: unknown value 'bogus' \(choose one of"):
            load_config(None, [f"{section}.{key}=bogus"])
        with pytest.raises(ConfigError, match=rf"^{section}\.{key}: unknown value 3 "):
            config_from_dict({section: {key: 3}})


def test_float16_on_cpu_is_refused_once_where_the_device_is_known():
    """The config alone does not know the device (`auto` may mean CPU); runtime.resolve_dtype refuses
    float16 on a CPU whichever way the CPU was chosen."""
    import torch

    from albert_gpt.runtime import resolve_dtype

    for device in ("cpu", "auto"):
        cfg = load_config(None, ["run.dtype=float16", f"run.device={device}"])
        with pytest.raises(ConfigError, match=r"^run\.dtype: float16 needs a CUDA device"):
            resolve_dtype(cfg.run, torch.device("cpu"))
    assert resolve_dtype(load_config(None, ["run.dtype=bfloat16"]).run, torch.device("cpu")) == torch.bfloat16


def test_with_vocab_fills_the_vocabulary_in_one_place_and_leaves_the_original():
    from albert_gpt.config import Config

    cfg = Config()
    filled = cfg.with_vocab(123)
    assert filled.model.vocab_size == 123 and cfg.model.vocab_size is None
    assert filled.model == cfg.model.with_vocab(123) and filled.train == cfg.train


def test_each_section_validates_itself_and_cannot_be_changed_in_place():
    """A section is checked when it is built, alone or through dataclasses.replace (which skipped the
    cross-field checks when only Config validated), and it is frozen: a changed copy is checked again."""
    import dataclasses

    from albert_gpt.config import DataConfig, ModelConfig, TrainConfig

    with pytest.raises(ConfigError, match=r"model.n_embd \(64\) must be divisible by model.n_heads \(5\)"):
        ModelConfig(n_embd=64, n_heads=5)
    with pytest.raises(ConfigError, match="model.n_groups"):
        dataclasses.replace(ModelConfig(n_layers=6, n_groups=1), n_groups=4)
    with pytest.raises(ConfigError, match="train.min_lr"):
        TrainConfig(lr=1e-4, min_lr=1e-3)
    with pytest.raises(ConfigError, match="data.url is required"):
        DataConfig(source="url")
    with pytest.raises(ConfigError, match="model.n_layers"):
        ModelConfig(n_layers=0)
    model = ModelConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.n_layers = 12  # type: ignore[misc]
    assert model.with_vocab(65).vocab_size == 65 and model.vocab_size is None


def test_a_literal_keys_help_lists_its_choices_from_its_type():
    """The choices in the key table come from the Literal itself, in order, with their notes; a note for a
    choice the type does not have is refused, and the CLI's --device/--dtype offer the same choices."""
    import dataclasses
    import typing

    from albert_gpt.cli import build_parser
    from albert_gpt.config import SECTIONS, _field_types, field_help, key_table, opt

    rows = {key: help for key, _, help in key_table()}
    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            hint = _field_types(cls)[f.name]
            if typing.get_origin(hint) is typing.Literal:
                help = rows[f"{name}.{f.name}"]
                listed = [part.split(" (")[0].split(";")[0].split(": ")[-1] for part in help.split(" | ")]
                assert listed == list(typing.get_args(hint)), (name, f.name, help)
    assert rows["run.device"] == "auto (cuda if available) | cpu | cuda"

    @dataclasses.dataclass
    class Bad:
        kind: typing.Literal["a", "b"] = opt("a", "kind", notes={"c": "not a choice"})

    with pytest.raises(ValueError, match="notes for choices it does not have"):
        field_help(dataclasses.fields(Bad)[0], typing.Literal["a", "b"])
    evaluate = build_parser()._subparsers._group_actions[0].choices["eval"]
    dtype = next(a for a in evaluate._actions if a.dest == "dtype")
    assert tuple(dtype.choices) == typing.get_args(_field_types(SECTIONS["run"])["dtype"])
