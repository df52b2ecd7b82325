"""Model weights to and from safetensors: wrapper prefixes removed, tied tensors kept tied.

safetensors refuses tensors that share storage, and a tied LM head shares the token embedding's
storage; the file holds one copy and a name -> stored-name alias table in its metadata, and loading
puts the one tensor back under every name. Nothing here unpickles anything.
Shapes: tensors keep their state-dict shapes; nothing is reshaped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from albert_gpt.errors import CheckpointError

_ALIASES_KEY = "albert_gpt.aliases"
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile, DDP / DataParallel
# Checkpoints written before a block's norms were named after their sub-layers.
_LEGACY_NORM = re.compile(r"^(blocks\.\d+\.)norm([12])\.")
_LEGACY_NAMES = {"1": "attn_norm", "2": "ffn_norm"}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile / DDP / DataParallel wrappers (any nesting)."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop `_orig_mod.` / `module.` key prefixes, but only when every key carries them (a real
    submodule may be called `module`)."""
    changed = True
    while state and changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items()}
                changed = True
    return state


def upgrade_legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename `blocks.N.norm1.*` / `norm2.*` (older checkpoints) to `attn_norm.*` / `ffn_norm.*`."""
    def rename(key: str) -> str:
        return _LEGACY_NORM.sub(lambda m: f"{m.group(1)}{_LEGACY_NAMES[m.group(2)]}.", key)

    return {rename(key): value for key, value in state.items()}


def _split_aliases(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """One stored tensor per tie (same storage, offset, shape, stride) plus name -> stored-name aliases."""
    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_name: dict[tuple, str] = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        view = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
                tuple(tensor.shape), tensor.stride(), tensor.dtype)
        # Empty tensors all report data_ptr 0 without being tied.
        if tensor.numel() > 0 and view in first_name:
            aliases[name] = first_name[view]
            continue
        first_name[view] = name
        stored[name] = tensor
    # Distinct views into one storage (not a tie) would still be refused: give each its own copy.
    owners: dict[tuple, int] = {}
    for tensor in stored.values():
        if tensor.numel() > 0:
            key = (tensor.device, tensor.untyped_storage().data_ptr())
            owners[key] = owners.get(key, 0) + 1
    for name, tensor in stored.items():
        shared = tensor.numel() > 0 and owners[(tensor.device, tensor.untyped_storage().data_ptr())] > 1
        stored[name] = (tensor.clone() if shared else tensor).cpu().contiguous()
    return stored, aliases


def save_weights(state: dict[str, torch.Tensor], file: Path) -> None:
    """Write a state dict (wrapper prefixes stripped, ties deduplicated) as safetensors."""
    tensors, aliases = _split_aliases(strip_wrapper_prefixes(state))
    save_file(tensors, file, metadata={"format": "pt", _ALIASES_KEY: json.dumps(aliases)})


def load_weights(file: Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, every tied name pointing at its one shared tensor."""
    try:
        with safe_open(str(file), framework="pt", device=str(map_location)) as f:
            aliases = json.loads((f.metadata() or {}).get(_ALIASES_KEY, "{}"))
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (OSError, ValueError, RuntimeError) as exc:  # SafetensorError subclasses RuntimeError
        raise CheckpointError(f"{file}: cannot read weights ({exc})") from None
    for alias, target in aliases.items():
        if target not in state:
            raise CheckpointError(f"{file}: tied tensor {alias} refers to missing {target}")
        state[alias] = state[target]
    return upgrade_legacy_keys(strip_wrapper_prefixes(state))


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """load_state_dict(strict=True), with a one-line error naming the first key that does not fit."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise CheckpointError(f"{source}: weights do not fit the model (missing {key})")
        if state[key].shape != tensor.shape:
            raise CheckpointError(f"{source}: weights do not fit the model ({key} has shape "
                                  f"{tuple(state[key].shape)}, the model expects {tuple(tensor.shape)})")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CheckpointError(f"{source}: weights do not fit the model (unexpected {extra[0]})")
    model.load_state_dict(state, strict=True)
