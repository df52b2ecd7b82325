"""Typed configuration: one dataclass per YAML section, validated on construction.

A field's type says what it holds (a `Literal[...]` lists its allowed values) and its metadata
carries its help text and its bounds (`min`, `max`, `min_exclusive`), so validation and the
README's key table come from one place.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from albert_gpt.errors import ConfigError
from albert_gpt.paths import write_atomic
from albert_gpt.typed_values import check_field, coerce, short_repr, unknown_key

# Upper bounds on sizes: far above anything trainable here, low enough that a typo (1e9 layers)
# is refused at once instead of hanging while the model is built.
MAX_CONFIG_BYTES, MAX_CONFIG_VALUES, MAX_OVERRIDE_CHARS = 1 << 20, 100_000, 10_000
MAX_DEPTH, MAX_WIDTH, MAX_CONTEXT, MAX_VOCAB, MAX_BATCH = 4096, 65_536, 1 << 20, 4_294_967_295, 1 << 20

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
Parallel = Literal["ddp", "fsdp"]
Sharing = Literal["all", "attention", "ffn"]
Arch = Literal["transformer", "lstm", "conv"]
NormKind = Literal[
    "layernorm", "rmsnorm", "batchnorm", "adaptive_layernorm", "groupnorm", "instancenorm", "none"
]
NormPlacement = Literal["post", "pre", "deepnorm", "none"]
NormImpl = Literal["fused", "reference"]
BatchStats = Literal["per_depth", "shared"]
BatchAxes = Literal["batch_time", "batch"]
LSTMNormSites = Literal["all", "input"]
DataSource = Literal["builtin", "files", "hub", "url"]
EncodingErrors = Literal["replace", "strict"]
TokenizerType = Literal["bpe", "char", "pretrained"]
InitScheme = Literal["gpt2", "normal", "torch"]
Schedule = Literal["cosine", "linear", "constant", "inverse_sqrt"]


def opt(default: Any, help: str, notes: dict[str, str] | None = None, tail: str = "",
        **constraints: Any) -> Any:
    """A dataclass field with help text and validation constraints. For a `Literal[...]` field the help
    lists its choices from the type itself (`field_help`): `notes` explain some of them, `tail`
    follows."""
    return field(default=default, metadata={"help": help, "notes": notes or {}, "tail": tail, **constraints})


def field_help(f: dataclasses.Field, hint: Any) -> str:
    """A field's help text; a Literal field's choices come from its type, in order, each with its note."""
    help, notes, tail = f.metadata["help"], f.metadata.get("notes", {}), f.metadata.get("tail", "")
    if typing.get_origin(hint) is not Literal:
        return help
    unknown = set(notes) - set(typing.get_args(hint))
    if unknown:
        raise ValueError(f"{f.name}: notes for choices it does not have: {sorted(unknown)}")
    listed = " | ".join(f"{c} ({notes[c]})" if c in notes else str(c) for c in typing.get_args(hint))
    return (f"{help}: {listed}" if help else listed) + (f"; {tail}" if tail else "")


@dataclass(frozen=True)
class RunConfig:
    SECTION: ClassVar[str] = "run"

    name: str = opt("run", "run directory name under out_dir (one plain folder name)", path_name=True)
    out_dir: str = opt("runs", "parent folder of run directories")
    seed: int = opt(1337, "one seed for init, data order and dropout", min=0, max=2**32 - 1)
    device: Device = opt("auto", "", notes={"auto": "cuda if available"})
    dtype: DType = opt("auto", "", notes={"auto": "bfloat16 where the device runs it fast, else float32"})
    compile: bool = opt(False, "wrap the model in torch.compile")
    threads: int = opt(0, "CPU threads for torch (0 = torch's default)", min=0, max=1024)
    overwrite: bool = opt(False, "allow training into an existing run directory, replacing it")
    parallel: Parallel = opt("ddp", "multi-process strategy under torchrun")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class ModelConfig:
    SECTION: ClassVar[str] = "model"

    arch: Arch = opt(
        "transformer", "", notes={"transformer": "shared post-LN blocks", "lstm": "a stacked LSTM LM",
                                  "conv": "a causal dilated-convolution LM"},
        tail="all three share the data, trainer, checkpoints and eval",
    )
    n_layers: int = opt(6, "layer applications (depth)", min=1, max=MAX_DEPTH)
    n_groups: int = opt(1, "distinct blocks shared across depth (1 = all shared, n_layers = unshared)", min=1)
    sharing: Sharing = opt(
        "all", "what the groups share", notes={"ffn": "the other sub-layer is per layer"}
    )
    n_embd: int = opt(384, "hidden size H", min=1, max=MAX_WIDTH)
    n_heads: int = opt(6, "attention heads (must divide n_embd; transformer only)", min=1, max=MAX_WIDTH)
    embedding_dim: int | None = opt(None, "token embedding size E (null = n_embd; E < H factorizes)", min=1,
                                  max=MAX_WIDTH)
    block_size: int = opt(256, "context length in tokens", min=1, max=MAX_CONTEXT)
    vocab_size: int | None = opt(None, "vocabulary size (null = taken from the tokenizer)", min=1,
                                max=MAX_VOCAB)
    pad_vocab_multiple: int = opt(
        1, "round the embedding table up to a multiple of this (64 -> GPU friendly)", min=1, max=MAX_WIDTH
    )
    ffn_mult: int = opt(4, "FFN width as a multiple of n_embd", min=1, max=64)
    dropout: float = opt(
        0.0, "dropout on embeddings, attention weights and residual branches", min=0.0, max=0.999
    )
    bias: bool = opt(True, "biases in linear layers")
    norm: NormKind = opt(
        "layernorm", "",
        tail="lstm: layernorm, rmsnorm, batchnorm or none; groupnorm and instancenorm: conv only",
    )
    norm_groups: int = opt(8, "groupnorm: channel groups at each position (1 = LayerNorm)", min=1,
                           max=MAX_WIDTH)
    norm_per_depth_affine: bool = opt(
        False, "adaptive normalization for shared blocks: every application of a shared block gets its "
        "own norm gamma and beta, starting equal to the shared ones (transformer only)"
    )
    norm_placement: NormPlacement = opt(
        "post", "", notes={"post": "x = LN(x + f(x))"},
        tail="transformer and conv blocks; an LSTM's norms sit inside its cell",
    )
    final_norm: bool = opt(
        True, "normalize the stream before the LM head (post-LN and DeepNorm blocks end in a norm "
        "already, so this adds one only for pre and none)"
    )
    lstm_norm_sites: LSTMNormSites = opt(
        "all", "lstm: which terms the norm normalizes",
        notes={"all": "input term, recurrent term, cell: Ba et al.'s LN-LSTM",
               "input": "the input term only"},
    )
    batch_stats: BatchStats = opt(
        "per_depth", "batchnorm in a shared block",
        notes={"per_depth": "each application keeps its own running statistics; gamma and beta stay shared",
               "shared": "one set for every depth"},
    )
    batch_axes: BatchAxes = opt(
        "batch_time", "batchnorm's training statistics",
        notes={"batch_time": "over every position of every sequence, as BatchNorm is usually applied to "
               "sequences; a token sees later tokens through them",
               "batch": "causal: at each position over the batch only, with running statistics per position"},
    )
    batch_group: int = opt(
        0, "batchnorm with batch_axes batch: ghost batches of this many sequences, each with its own "
        "statistics (0 = the whole batch; at least 2)", min=0, max=2**20
    )
    norm_affine: bool = opt(True, "learnable gamma and beta in the norms")
    norm_eps: float = opt(1e-5, "epsilon inside the square root of the norms", min_exclusive=0.0)
    norm_impl: NormImpl = opt(
        "fused", "", notes={"fused": "torch.nn.functional.layer_norm", "reference": "the written-out formula"}
    )
    init_std: float = opt(0.02, "std of the normal init of weights", min_exclusive=0.0)
    init_scheme: InitScheme = opt(
        "gpt2", "",
        notes={"gpt2": "N(0, init_std), residual output projections scaled down with depth",
               "normal": "N(0, init_std) everywhere, nothing scaled with depth",
               "torch": "each layer's own PyTorch default: fan-in uniform for linear, conv and LSTM weights, "
               "N(0, 1) embeddings"},
    )
    conv_kernel_size: int = opt(3, "conv: taps of each causal convolution", min=2, max=MAX_CONTEXT)
    conv_dilation_cycle: int = opt(
        4, "conv: layer d dilates by 2 ** (d % cycle), so the receptive field doubles across each cycle",
        min=1, max=30,
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.arch == "transformer" and self.n_embd % self.n_heads:
            raise ConfigError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_heads ({self.n_heads})"
            )
        if self.n_layers % self.n_groups:
            raise ConfigError(
                f"model.n_groups ({self.n_groups}) must divide model.n_layers ({self.n_layers})"
            )
        _validate_arch(self)
        if self.embedding_dim is not None and self.embedding_dim > self.n_embd:
            raise ConfigError(
                f"model.embedding_dim ({self.embedding_dim}) must be <= model.n_embd ({self.n_embd})"
            )

    def with_vocab(self, vocab_size: int) -> ModelConfig:
        """This model with the tokenizer's vocabulary size filled in (model.vocab_size null = take it)."""
        return dataclasses.replace(self, vocab_size=vocab_size)


@dataclass(frozen=True)
class DataConfig:
    SECTION: ClassVar[str] = "data"

    source: DataSource = opt(
        "builtin", "", notes={"builtin": "Python's docs, offline", "url": "one file, downloaded once"}
    )
    path: str | None = opt(
        None, "files: a file, directory or glob; hub: the dataset's hub name or a local copy; url: a local "
        "copy of the file (used instead of downloading when its sha256 matches)"
    )
    url: str | None = opt(None, "url: where the single-file corpus is downloaded from (http, https, file)")
    sha256: str | None = opt(
        None, "url: the file's SHA-256 (64 hex digits); a download that differs is refused"
    )
    download_max_bytes: int = opt(
        20_000_000_000, "url: the largest download accepted, in bytes (a longer one is stopped and removed)",
        min=1, max=2**62,
    )
    download_timeout_s: float = opt(
        10_800.0, "url: the whole download must finish within this many seconds (each read waits at most "
        "60 s)", min_exclusive=0.0, max=1e7,
    )
    config: str | None = opt(None, "hub: dataset configuration, e.g. wikitext-103-raw-v1")
    split: str = opt("train", "hub: the training split")
    val_split: str | None = opt("validation", "hub: the validation split (null = carve from train)")
    test_split: str | None = opt("test", "hub: the test split (null = carve from train)")
    streaming: bool = opt(
        False, "train from a stream (hub or local files): text is tokenized and packed as training goes, "
        "nothing ahead but the held-out slices; resumes exactly"
    )
    stream_holdout_tokens: int = opt(
        262_144, "streaming: tokens in each held-out slice (val, test), from the source's own split or "
        "else from the head of the stream (which training then skips)", min=2,
    )
    shuffle_buffer: int = opt(1024, "streaming: windows in the shuffle buffer", min=1)
    max_documents: int | None = opt(
        None, "read at most this many documents of each source split (null = all)", min=1
    )
    text_field: str = opt("text", "text column of .jsonl / .parquet / hub datasets")
    join_rows: bool = opt(
        False, "rows are pieces of one text, no end-of-text token between them (e.g. WikiText lines)"
    )
    val_fraction: float = opt(0.05, "share of documents held out for validation", min=0.0, max=0.5)
    test_fraction: float = opt(0.05, "share of documents held out for test", min=0.0, max=0.5)
    encoding_errors: EncodingErrors = opt(
        "replace", "invalid UTF-8", notes={"replace": "and report the count", "strict": "refuse"}
    )
    cache_dir: str = opt("data_cache", "where tokenized corpora are cached")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError("data.val_fraction + data.test_fraction must be < 1")
        if self.source == "url" and not self.url:
            raise ConfigError("data.url is required when data.source is url")
        if self.url is not None and urllib.parse.urlparse(self.url).scheme not in ("http", "https", "file"):
            raise ConfigError(f"data.url: {self.url!r} is not an http, https or file URL")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ConfigError("data.sha256: expected 64 lowercase hex digits (the output of sha256sum)")


@dataclass(frozen=True)
class TokenizerConfig:
    SECTION: ClassVar[str] = "tokenizer"

    type: TokenizerType = opt("bpe", "", notes={"bpe": "byte-level, trained"})
    vocab_size: int = opt(4096, "bpe: target vocabulary size", min=260, max=4_294_967_295)
    min_frequency: int = opt(2, "bpe: minimum pair frequency for a merge", min=1)
    train_max_bytes: int = opt(
        200_000_000, "bpe: train on at most this many bytes of the training split, taken evenly across it; a "
        "byte in a run of 64+ characters without whitespace counts 25 times (memory and time of training "
        "stay bounded on any corpus: lower it to bound them lower)", min=1,
    )
    path: str | None = opt(
        None, "pretrained: a tokenizer.json, a folder holding one, or a hub model name (e.g. gpt2)"
    )
    eot_token: str = opt("<|endoftext|>", "end-of-text token placed between documents")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.type == "pretrained" and not self.path:
            raise ConfigError("tokenizer.path is required when tokenizer.type is pretrained")


@dataclass(frozen=True)
class TrainConfig:
    SECTION: ClassVar[str] = "train"

    batch_size: int = opt(12, "sequences per micro-batch", min=1, max=MAX_BATCH)
    grad_accum_steps: int = opt(1, "micro-batches per optimizer step", min=1, max=MAX_BATCH)
    max_steps: int = opt(2000, "optimizer steps", min=0)
    max_tokens: int | None = opt(None, "stop after this many training tokens (overrides max_steps)", min=1)
    lr: float = opt(1e-3, "peak learning rate", min_exclusive=0.0)
    min_lr: float = opt(1e-4, "learning-rate floor of the schedule", min=0.0)
    schedule: Schedule = opt("cosine", "", tail="each after linear warmup")
    warmup_steps: int = opt(100, "linear warmup steps", min=0)
    weight_decay: float = opt(
        0.1, "AdamW decay on weight matrices (never norms, biases, embeddings)", min=0.0
    )
    beta1: float = opt(0.9, "AdamW beta1", min=0.0, max=0.999999)
    beta2: float = opt(0.99, "AdamW beta2", min=0.0, max=0.999999)
    adam_eps: float = opt(1e-8, "AdamW epsilon", min_exclusive=0.0)
    grad_clip: float = opt(1.0, "clip the global gradient norm to this (0 = off)", min=0.0)
    checkpoint_interval: int = opt(500, "steps between checkpoints (0 = only at the end)", min=0)
    keep_checkpoints: int = opt(2, "recent checkpoints kept (the best by val loss is kept too)", min=1)
    max_skipped_steps: int = opt(20, "stop after more non-finite steps in a row than this", min=0)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.min_lr > self.lr:
            raise ConfigError(f"train.min_lr ({self.min_lr}) must be <= train.lr ({self.lr})")


@dataclass(frozen=True)
class EvalConfig:
    SECTION: ClassVar[str] = "eval"

    interval: int = opt(250, "steps between evaluations (0 = only at the end)", min=0)
    batches: int = opt(20, "validation batches per evaluation (0 = the whole split)", min=0)
    batch_size: int | None = opt(None, "evaluation batch size (null = train.batch_size)", min=1,
                                max=MAX_BATCH)
    sample_tokens: int = opt(64, "tokens of generated text logged at each evaluation (0 = none)", min=0)
    sample_prompt: str = opt("\n", "prompt for those samples")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class LogConfig:
    SECTION: ClassVar[str] = "log"

    progress: bool = opt(True, "tqdm progress bars (false for quiet logs)")
    interval: int = opt(10, "steps between train/* scalars", min=1)
    tensorboard: bool = opt(True, "write TensorBoard event files into RUN_DIR")
    diagnostics_interval: int = opt(0, "steps between per-depth diag/* statistics (0 = off)", min=0)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        validate(self)

    def with_vocab(self, vocab_size: int) -> Config:
        """This config with the tokenizer's vocabulary size in model.vocab_size (validated again)."""
        return dataclasses.replace(self, model=self.model.with_vocab(vocab_size))

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name


SECTIONS: dict[str, type] = {
    "run": RunConfig, "model": ModelConfig, "data": DataConfig, "tokenizer": TokenizerConfig,
    "train": TrainConfig, "eval": EvalConfig, "log": LogConfig,
}


# ---------------------------------------------------------------- reading

@functools.cache
def _field_types(cls: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _section_mapping(name: str, values: Any) -> dict[str, Any]:
    """A section's keys as a plain dict; anything but a mapping (or nothing) is refused."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{name}: expected a mapping of keys, got {short_repr(values)}")
    return dict(values)


def _known_sections(raw: Any) -> dict[str, Any]:
    """The top level of a config: a mapping (or nothing) whose keys are all section names."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(raw).__name__}")
    for name in raw:
        if name not in SECTIONS:
            raise unknown_key(name, list(SECTIONS))
    return raw


# Keys of earlier versions, and what took their place.
REMOVED_KEYS = {
    ("data", "num_proc"): "removed; tokenization runs on the tokenizers batch encoder, whose threads use "
    "every core (measured faster than datasets.map processes; set RAYON_NUM_THREADS to use fewer)",
    ("data", "name"): "removed; a hub dataset is named by data.path (its hub name or a local copy), "
    "e.g. data.path: wikitext",
}


def _build_section(name: str, values: Any) -> Any:
    types_ = _field_types(SECTIONS[name])
    kwargs = {}
    for key, value in _section_mapping(name, values).items():
        if (name, key) in REMOVED_KEYS:
            raise ConfigError(f"{name}.{key}: {REMOVED_KEYS[name, key]}")
        if key not in types_:
            raise unknown_key(f"{name}.{key}", list(types_))
        kwargs[key] = coerce(f"{name}.{key}", value, types_[key], from_text=False)
    return SECTIONS[name](**kwargs)


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build and validate a Config from a nested mapping (as read from YAML)."""
    raw = _known_sections(raw)
    sections = {name: _build_section(name, raw.get(name)) for name in SECTIONS}
    return Config(**sections)


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(cfg)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings to a raw mapping, coercing each to its field's type."""
    raw = _known_sections(raw)
    raw = {name: _section_mapping(name, values) for name, values in raw.items()}
    for item in overrides:
        if len(item) > MAX_OVERRIDE_CHARS:
            raise ConfigError(f"override {short_repr(item)}: {len(item):,} characters (at most "
                              f"{MAX_OVERRIDE_CHARS:,})")
        if "=" not in item:
            raise ConfigError(f"override {short_repr(item)}: expected KEY=VALUE, e.g. train.lr=3e-4")
        key, text = item.split("=", 1)
        key = key.strip()
        if "." not in key:
            raise ConfigError(f"override {short_repr(item)}: key must be section.name, e.g. train.lr")
        section, name = key.split(".", 1)
        if section not in SECTIONS:
            raise unknown_key(section, list(SECTIONS))
        types_ = _field_types(SECTIONS[section])
        if (section, name) in REMOVED_KEYS:
            raise ConfigError(f"{key}: {REMOVED_KEYS[section, name]}")
        if name not in types_:
            raise unknown_key(key, list(types_))
        raw.setdefault(section, {})[name] = coerce(key, text, types_[name], from_text=True)
    return raw


def read_yaml(path: Path) -> Any:
    """The YAML document in `path`, or a one-line ConfigError naming the file (and line)."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {size:,} bytes; a config file is at most {MAX_CONFIG_BYTES:,} bytes")
        text = path.read_bytes()[: MAX_CONFIG_BYTES + 1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); a config is a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read") from None
    except ValueError as exc:  # e.g. an integer longer than Python converts (4,300 digits)
        raise ConfigError(f"{path}: {str(exc).splitlines()[0][:80]}") from None
    check_value_count(raw, str(path))
    return raw


def check_value_count(raw: Any, where: str) -> None:
    """Refuse a document with more than MAX_CONFIG_VALUES values, counting each use of a YAML alias
    again (an alias bomb is small on disk and huge once expanded); stops counting at the limit. A value
    that contains itself is counted once (the section checks name it)."""
    stack: list[tuple[Any, bool]] = [(raw, False)]
    inside: set[int] = set()  # containers on the path from the top to the value being counted
    seen = 0
    while stack:
        value, leaving = stack.pop()
        if leaving:
            inside.discard(id(value))
            continue
        seen += 1
        if seen > MAX_CONFIG_VALUES:
            raise ConfigError(f"{where}: more than {MAX_CONFIG_VALUES:,} values (counting every use of a "
                              "YAML alias); a config is a small file")
        if not isinstance(value, (dict, list, tuple, set)) or id(value) in inside:
            continue
        inside.add(id(value))
        stack.append((value, True))
        children = [*value.keys(), *value.values()] if isinstance(value, dict) else list(value)
        stack.extend((child, False) for child in children)

def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from defaults when path is None), apply overrides, validate."""
    raw: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        raw = read_yaml(path)
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        return config_from_dict(apply_overrides(raw, overrides or []))
    except RecursionError:  # a YAML alias that contains itself
        raise ConfigError(f"{path}: a value refers to itself (recursive YAML alias)") from None


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config atomically."""
    write_atomic(Path(path), dump_config(cfg))


# ---------------------------------------------------------------- validation

def check_fields(section: Any) -> None:
    """Each field of a section against its type and bounds (ConfigError naming section.key)."""
    hints = _field_types(section.__class__)
    for f in dataclasses.fields(section):
        check_field(f"{section.SECTION}.{f.name}", f, hints[f.name], getattr(section, f.name))


def validate(cfg: Config) -> None:
    """The checks across sections (each section has checked itself when it was built): one line, naming
    the keys."""
    for name, cls in SECTIONS.items():
        if not isinstance(getattr(cfg, name), cls):
            raise ConfigError(f"{name}: expected a {cls.__name__}, got {type(getattr(cfg, name)).__name__}")
    m, t = cfg.model, cfg.train
    if m.batch_group and t.batch_size % m.batch_group:
        raise ConfigError(
            f"model.batch_group ({m.batch_group}) must divide train.batch_size ({t.batch_size})"
        )


_ARCH_NORMS = {
    "transformer": ("layernorm", "rmsnorm", "batchnorm", "adaptive_layernorm", "none"),
    "lstm": ("layernorm", "rmsnorm", "batchnorm", "none"),
    "conv": ("layernorm", "rmsnorm", "batchnorm", "groupnorm", "instancenorm", "none"),
}


def _validate_arch(m: ModelConfig) -> None:
    """What each architecture supports: its norms, its sharing, where its norms sit."""
    if m.norm not in _ARCH_NORMS[m.arch]:
        raise ConfigError(f"model.norm: {m.norm} is not available for model.arch {m.arch} "
                          f"(choose from {', '.join(_ARCH_NORMS[m.arch])})")
    if m.norm == "groupnorm" and m.n_embd % m.norm_groups:
        raise ConfigError(f"model.norm_groups ({m.norm_groups}) must divide model.n_embd ({m.n_embd})")
    if m.arch != "transformer" and m.sharing != "all":
        raise ConfigError(f"model.sharing: {m.sharing} applies to transformer blocks only; "
                          f"a {m.arch} layer is shared whole (set model.sharing: all)")
    if m.arch == "lstm" and m.norm_placement != "post":
        raise ConfigError("model.norm_placement applies to transformer and conv blocks; an LSTM's norms sit "
                          "inside its cell (choose them with model.norm)")
    if m.lstm_norm_sites != "all" and (m.arch != "lstm" or m.norm == "none"):
        raise ConfigError("model.lstm_norm_sites applies to an LSTM with a norm (model.arch: lstm, "
                          "model.norm not none)")
    if m.arch != "transformer" and m.norm_per_depth_affine:
        raise ConfigError("model.norm_per_depth_affine applies to shared transformer blocks only")
    if m.norm_per_depth_affine and m.norm not in ("layernorm", "rmsnorm", "batchnorm"):
        raise ConfigError("model.norm_per_depth_affine needs a norm with a gain and bias "
                          f"(layernorm, rmsnorm or batchnorm), not {m.norm}")
    if m.norm_per_depth_affine and not m.norm_affine:
        raise ConfigError("model.norm_per_depth_affine needs model.norm_affine: true")
    if m.batch_axes != "batch_time" and m.norm != "batchnorm":
        raise ConfigError("model.batch_axes applies to model.norm: batchnorm")
    if m.batch_group and (m.norm != "batchnorm" or m.batch_axes != "batch"):
        raise ConfigError("model.batch_group applies to model.norm: batchnorm with model.batch_axes: batch")
    if m.batch_group == 1:
        raise ConfigError("model.batch_group: 1 sequence has no batch statistics (use 0 for the whole batch, "
                          "or at least 2)")
    shared = m.n_groups < m.n_layers
    if m.arch != "transformer" and m.norm == "batchnorm" and shared and m.batch_stats == "per_depth":
        raise ConfigError(
            "model.batch_stats: per-depth BatchNorm statistics are built for shared transformer blocks "
            f"only; for a shared {m.arch} layer set model.batch_stats: shared, or unshare it "
            "(model.n_groups = model.n_layers)"
        )


def key_table() -> list[tuple[str, str, str]]:
    """(key, default, help) for every config key, for the README table."""
    rows = []
    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            default = yaml.safe_dump(f.default, default_flow_style=True).strip().removesuffix("...").strip()
            rows.append((f"{name}.{f.name}", default, field_help(f, _field_types(cls)[f.name])))
    return rows
