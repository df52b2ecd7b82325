"""Fuzzing the config loader and the `--set` parser: whatever the input, the result is a valid Config
or a one-line ConfigError, never another exception.

Hypothesis generates random YAML documents (sections of random keys and values, including NaN,
infinities, huge numbers, nested lists and non-string keys), random byte-level mutations of the
shipped configs, and random override strings.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from albert_gpt.config import SECTIONS, Config, _field_types, load_config
from albert_gpt.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").rglob("*.yaml"))
KEYS = [(section, key) for section, cls in SECTIONS.items() for key in _field_types(cls)]
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_SCRATCH = Path(tempfile.mkdtemp(prefix="albert_gpt_fuzz_"))

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["post", "pre", "none", "layernorm", "auto", "cpu", "1e9", "nan", "-inf", "0x10", "..",
                     "/tmp/x", "", "1_000", "true", "null"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=6), inner, max_size=3), max_leaves=6)
known_key_values = st.sampled_from(KEYS).flatmap(lambda k: st.tuples(st.just(k), values))


def _load_text(data: bytes) -> Config | None:
    path = _SCRATCH / "fuzz.yaml"
    path.write_bytes(data)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc), repr(str(exc))
        return None
    assert isinstance(cfg, Config)
    return cfg


def _check_valid(cfg: Config) -> None:
    """A config that loads is one the rest of the program can trust."""
    for section in SECTIONS:
        for key, value in vars(getattr(cfg, section)).items():
            if isinstance(value, float):
                assert math.isfinite(value), (section, key, value)
    assert "/" not in cfg.run.name and cfg.run.name not in ("", ".", "..")
    assert cfg.model.arch != "transformer" or cfg.model.n_embd % cfg.model.n_heads == 0


@FUZZ
@given(st.lists(known_key_values, max_size=6), st.dictionaries(st.text(max_size=8), values, max_size=2))
def test_random_yaml_documents_give_a_config_or_one_line(pairs, extra_sections):
    raw: dict = dict(extra_sections)
    for (section, key), value in pairs:
        if isinstance(raw.get(section), dict):
            raw[section][key] = value
        else:
            raw[section] = {key: value}
    try:
        text = yaml.safe_dump(raw, allow_unicode=True)
    except yaml.YAMLError:
        return
    cfg = _load_text(text.encode("utf-8"))
    if cfg is not None:
        _check_valid(cfg)


@FUZZ
@given(st.sampled_from(SHIPPED), st.lists(st.tuples(st.integers(0, 4000), st.binary(min_size=0, max_size=3),
                                                    st.integers(0, 3)), min_size=1, max_size=4))
def test_mutated_shipped_configs_give_a_config_or_one_line(path, edits):
    data = bytearray(path.read_bytes())
    for at, insert, delete in edits:
        at = at % (len(data) + 1)
        data[at : at + delete] = insert
    cfg = _load_text(bytes(data))
    if cfg is not None:
        _check_valid(cfg)


@FUZZ
@given(st.lists(st.one_of(
    st.text(max_size=30),
    st.builds(lambda k, v: f"{k[0]}.{k[1]}={v}", st.sampled_from(KEYS), st.text(max_size=12)),
    st.builds(lambda k, v: f"{k[0]}.{k[1]}={v}", st.sampled_from(KEYS), st.sampled_from(
        ["nan", "inf", "-1", "0", "1e400", "1e9", "../x", "", "null", "True", "3e-4", "\x00", "post"])),
), max_size=5))
def test_random_overrides_give_a_config_or_one_line(overrides):
    try:
        cfg = load_config(None, overrides)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc).replace("\\n", ""), repr(str(exc))
        return
    _check_valid(cfg)


def test_the_fuzzers_reach_both_outcomes():
    """The generators are not degenerate: some documents load, some are refused."""
    assert _load_text(b"model:\n  n_layers: 4\n") is not None
    assert _load_text(b"model:\n  n_layers: .nan\n") is None
    with pytest.raises(ConfigError):
        load_config(None, ["train.lr=inf"])
