"""`albert-gpt export RUN OUT_DIR`: a trained run as a Hugging Face transformers model folder.

The folder holds config.json, model.safetensors, the tokenizer (tokenizer.json, tokenizer_config.json,
special_tokens_map.json), generation_config.json, a README and the modeling files that
`AutoModelForCausalLM.from_pretrained(OUT_DIR, trust_remote_code=True)` runs (albert_gpt/export/hf/;
they need torch and transformers, not albert_gpt). Writing it needs neither transformers nor the
training data. Shared modules are stored once; the config's sharing map says which one each layer
application uses.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from albert_gpt.checkpoint import load_run_checkpoint, require_run_dir
from albert_gpt.config import Config
from albert_gpt.errors import ConfigError
from albert_gpt.modeling.base import CausalLM
from albert_gpt.modeling.model import AlbertGPT
from albert_gpt.modeling.wiring import wiring
from albert_gpt.paths import UnsafePath, delete, entries, is_inside, marker_kind, only, write_marker

MODEL_FILES = ("configuration_albert_gpt.py", "modeling_albert_gpt.py")
EXPORTABLE_NORMS = ("layernorm", "rmsnorm", "none")


def _unique(modules: list[torch.nn.Module]) -> tuple[list[torch.nn.Module], list[int]]:
    """The distinct modules in first-use order, and each position's index among them."""
    distinct: dict[int, int] = {}
    order: list[torch.nn.Module] = []
    for m in modules:
        if id(m) not in distinct:
            distinct[id(m)] = len(order)
            order.append(m)
    return order, [distinct[id(m)] for m in modules]


def hf_state_and_config(cfg: Config, model: CausalLM) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The exported tensors (each shared module once) and the config's model fields with its sharing map."""
    m = cfg.model
    if m.arch != "transformer":
        raise ConfigError(f"export writes transformer models; this run's model.arch is {m.arch}")
    if m.norm not in EXPORTABLE_NORMS:
        raise ConfigError(f"export supports model.norm {', '.join(EXPORTABLE_NORMS)}; this run uses {m.norm}")
    assert isinstance(model, AlbertGPT)  # what model.arch transformer builds
    depths = [model.blocks[i] for i in model.schedule]
    wired = wiring(m)
    groups = {}
    maps = {}
    for part in ("attn", "ffn", "attn_norm", "ffn_norm"):
        groups[part], maps[part] = _unique([getattr(block, part) for block in depths])
    state: dict[str, torch.Tensor] = {}

    def add(prefix: str, module: torch.nn.Module | None) -> None:
        if module is not None:
            for name, tensor in module.state_dict().items():
                state[f"{prefix}{name}"] = tensor.detach().float().contiguous().clone()

    add("tok_emb.", model.tok_emb)
    add("emb_proj.", model.emb_proj)
    add("pos_emb.", model.pos_emb)
    for part, plural in (
        ("attn", "attns"),
        ("ffn", "ffns"),
        ("attn_norm", "attn_norms"),
        ("ffn_norm", "ffn_norms"),
    ):
        for i, module in enumerate(groups[part]):
            add(f"{plural}.{i}.", module)
    add("final_norm.", model.final_norm)
    add("head_proj.", model.head_proj)
    fields = {
        "vocab_size": m.vocab_size,
        "padded_vocab_size": model.tok_emb.num_embeddings,
        "n_embd": m.n_embd,
        "embedding_dim": m.embedding_dim or m.n_embd,
        "n_heads": m.n_heads,
        "n_layers": m.n_layers,
        "block_size": m.block_size,
        "ffn_mult": m.ffn_mult,
        "bias": m.bias,
        "norm": m.norm,
        "norm_placement": m.norm_placement,  # for readers; the wiring below is what the model file uses
        "norm_first": wired.norm_first,
        "residual_alpha": wired.alpha,
        "block_norms": wired.has_norm,
        "norm_eps": m.norm_eps,
        "norm_affine": m.norm_affine,
        "final_norm": not isinstance(model.final_norm, torch.nn.Identity),
        "attn_of_depth": maps["attn"],
        "ffn_of_depth": maps["ffn"],
        "attn_norm_of_depth": maps["attn_norm"],
        "ffn_norm_of_depth": maps["ffn_norm"],
    }
    return state, fields


# Everything export writes into its folder: what `--overwrite` may replace.
EXPORT_FILES = frozenset({
    "config.json", "generation_config.json", "model.safetensors", "README.md", "special_tokens_map.json",
    "tokenizer.json", "tokenizer_config.json", *MODEL_FILES,
})


def _is_export(folder: Path) -> bool:
    """Proof that albert-gpt export wrote `folder`: its marker (or, from before the marker, an
    albert_gpt config.json), and nothing in it but the files export writes."""
    if marker_kind(folder) == "export":
        return only(folder, EXPORT_FILES)
    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return False
    return model_type == "albert_gpt" and only(folder, EXPORT_FILES)


def _check_out_dir(run_dir: Path, out_dir: Path, overwrite: bool) -> None:
    """Where export may write: a new or empty folder, or (with --overwrite) a folder it exported before;
    never the run, the working directory, a link, or a folder holding any of them."""
    if out_dir.is_symlink():
        raise ConfigError(f"{out_dir} is a symbolic link; give the folder to write itself")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} is a file; choose a folder to write the export into")
    if is_inside(run_dir, out_dir):
        raise ConfigError(f"{out_dir} is or contains the run being exported ({run_dir}); choose another "
                          "folder")
    if out_dir.exists() and is_inside(Path.cwd(), out_dir):
        raise ConfigError(f"{out_dir} is or contains the working directory; export writes a folder of its "
                          "own (e.g. exported/NAME)")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"{out_dir} exists and is not empty; choose another folder or pass --overwrite")
    if not _is_export(out_dir):
        shown = ", ".join(sorted(entries(out_dir))[:4])
        raise ConfigError(f"{out_dir} was not written by albert-gpt export (it holds {shown}...); "
                          "--overwrite replaces only an earlier export; choose another folder")


def export_run(run_dir: Path, out_dir: Path, checkpoint: str | None = None, overwrite: bool = False) -> Path:
    """Write the Hugging Face folder for a run's checkpoint (best, else latest, unless named); returns it.
    The folder appears whole or not at all (written beside it, then renamed)."""
    run_dir, out_dir = Path(run_dir), Path(os.path.abspath(out_dir))
    require_run_dir(run_dir)
    _check_out_dir(run_dir, out_dir, overwrite)
    loaded = load_run_checkpoint(run_dir, checkpoint, device="cpu")
    path, cfg, model, tokenizer = loaded.path, loaded.cfg, loaded.model, loaded.tokenizer
    state, fields = hf_state_and_config(cfg, model)
    eot = tokenizer.eot_id
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    except OSError as exc:
        raise ConfigError(f"cannot write in {out_dir.parent} ({exc.strerror or exc})") from None
    try:
        write_marker(tmp, "export")
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _write_json(
            tmp / "config.json",
            {
                "architectures": ["AlbertGPTForCausalLM"],
                "model_type": "albert_gpt",
                "auto_map": {
                    "AutoConfig": "configuration_albert_gpt.AlbertGPTConfig",
                    "AutoModelForCausalLM": "modeling_albert_gpt.AlbertGPTForCausalLM",
                },
                **fields,
                "bos_token_id": eot,
                "eos_token_id": eot,
                "pad_token_id": eot,
                "torch_dtype": "float32",
                "tie_word_embeddings": False,  # the head reads tok_emb's weight itself: nothing to tie
            },
        )
        _write_json(
            tmp / "generation_config.json",
            {
                "bos_token_id": eot,
                "eos_token_id": eot,
                "pad_token_id": eot,
                # no max_length: beside a caller's max_new_tokens, transformers warns that both are set;
                # the context limit is in the tokenizer's model_max_length and the model card
            },
        )
        tokenizer.save(tmp / "tokenizer.json")
        specials = {
            "bos_token": tokenizer.eot_token,
            "eos_token": tokenizer.eot_token,
            "pad_token": tokenizer.eot_token,
        }
        if tokenizer.kind == "char":
            from albert_gpt.data.tokenizer import UNKNOWN_TOKEN

            specials["unk_token"] = UNKNOWN_TOKEN
        _write_json(tmp / "special_tokens_map.json", specials)
        _write_json(
            tmp / "tokenizer_config.json",
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                **specials,
                "model_max_length": cfg.model.block_size,
                "add_bos_token": False,
                "add_eos_token": False,
                "clean_up_tokenization_spaces": False,
                # the end-of-text spelling inside a text is text, as in training (not in tokenizer.json)
                "split_special_tokens": True,
            },
        )
        source = resources.files("albert_gpt.export") / "hf"
        for name in MODEL_FILES:
            (tmp / name).write_text(source.joinpath(name).read_text(encoding="utf-8"), encoding="utf-8")
        (tmp / "README.md").write_text(_model_card(run_dir, path, cfg), encoding="utf-8")
        _readable_by_all(tmp)
        if out_dir.exists():  # checked above: empty, or an earlier export (--overwrite)
            if any(out_dir.iterdir()):
                delete(out_dir, out_dir.parent, _is_export, protect=(run_dir,))
            else:
                out_dir.rmdir()
        tmp.rename(out_dir)
    except UnsafePath as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"cannot write {out_dir} ({exc.strerror or exc}); nothing was replaced") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)  # our own folder, made above
    return out_dir


def _readable_by_all(folder: Path) -> None:
    """Modes as for any file the user writes (umask), not mkdtemp's private 0700 / 0600."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for file in folder.iterdir():
        file.chmod(0o666 & ~umask)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _model_card(run_dir: Path, checkpoint: Path, cfg: Config) -> str:
    m = cfg.model
    sharing = "one block shared by every layer" if m.n_groups == 1 else f"{m.n_groups} distinct blocks"
    return f"""# {run_dir.name}

An albert_gpt causal language model: {m.n_layers} layer applications of {sharing}
(sharing: {m.sharing}), {m.norm} placed {m.norm_placement}, hidden size {m.n_embd}, {m.n_heads} heads,
context {m.block_size} tokens, vocabulary {m.vocab_size}. Exported from {checkpoint.name} of the run
`{run_dir.name}` with `albert-gpt export`.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(PATH, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(PATH, trust_remote_code=True)
ids = tokenizer("Some text", return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=40, do_sample=True, top_k=50)
print(tokenizer.decode(out[0]))
```

The context is {m.block_size} tokens: prompt and generated tokens together must fit in it.
"""
