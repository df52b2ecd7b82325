"""The checkpoint state of a DDP / FSDP2 model: one file format whatever the strategy.

`model.safetensors` holds the whole model state dict and `state.pt` the optimizer state as
`torch.optim.Optimizer.state_dict()` lays it out (integer parameter ids). Under FSDP both are
gathered to rank 0 before writing and sharded again when resuming, so a run saved by N processes
loads into 1 process for eval and generate, and resumes under any strategy. Every rank's RNG state
is kept too, so each rank resumes its own dropout stream.
Shapes: tensors keep their parameter / state-dict shapes; nothing here reshapes anything.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from albert_gpt.checkpoint.weights import load_strict
from albert_gpt.errors import CheckpointError
from albert_gpt.training.distributed import DistInfo

log = logging.getLogger("albert_gpt")

def load_location(info: DistInfo) -> torch.device:
    """Where to load a checkpoint: under FSDP the whole state passes through CPU memory, since the
    device holds only this rank's shard."""
    return torch.device("cpu") if info.parallel == "fsdp" else info.device


def _resharded(model: nn.Module) -> nn.Module:
    """FSDP leaves the root's parameters gathered after a forward pass without backward (evaluation,
    generation); the state-dict functions expect the sharded parameters the optimizer holds."""
    for module in model.modules():
        reshard = getattr(module, "reshard", None)  # an FSDP2 module
        if callable(reshard):
            reshard()
    return model


def _state_dict_options(cpu_offload: bool = False, strict: bool = True) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload, strict=strict)


def model_state_for_checkpoint(model: nn.Module, info: DistInfo) -> dict[str, torch.Tensor] | None:
    """FSDP: the whole state dict, gathered to rank 0's CPU memory (every rank must call this; the
    others get an empty dict). None otherwise: the caller's own `state_dict()` is already whole."""
    if info.parallel != "fsdp":
        return None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state: Any = get_model_state_dict(_resharded(model), options=_state_dict_options(cpu_offload=True))
    return state  # tensors: a model's state dict holds nothing else


def optimizer_state_for_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer,
                                   info: DistInfo) -> dict[str, Any]:
    """`optimizer.state_dict()`; under FSDP gathered whole to rank 0 (collective) and renumbered
    from parameter names to integer ids, so the file is the one a single process writes."""
    if info.parallel != "fsdp":
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    options = _state_dict_options(cpu_offload=True)
    full: Any = get_optimizer_state_dict(_resharded(model), optimizer, options=options)
    if not info.is_main:
        return {}
    ids: dict[str, int] = {}
    groups = []
    for group in full["param_groups"]:
        groups.append({**group, "params": [ids.setdefault(name, len(ids)) for name in group["params"]]})
    return {"state": {ids[name]: value for name, value in full["state"].items()}, "param_groups": groups}


def _check_fits(shapes: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor], source: Path) -> None:
    for key, shape in shapes.items():
        if key not in state:
            raise CheckpointError(f"{source}: weights do not fit the model (missing {key})")
        if tuple(state[key].shape) != shape:
            raise CheckpointError(f"{source}: weights do not fit the model ({key} has shape "
                                  f"{tuple(state[key].shape)}, the model expects {shape})")
    extra = sorted(set(state) - set(shapes))
    if extra:
        raise CheckpointError(f"{source}: weights do not fit the model (unexpected {extra[0]})")


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path, info: DistInfo) -> None:
    """Load a whole state dict (every rank passes the same one); FSDP keeps only each rank's shard."""
    if info.parallel != "fsdp":
        load_strict(model, state, source)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    current = model.state_dict(keep_vars=True)
    # A sharded parameter's .shape is its whole (global) shape.
    _check_fits({k: tuple(v.shape) for k, v in current.items()}, state, source)
    # A sub-layer shared across blocks appears under each block's name; the state-dict API shards
    # it under its first name only and would find the others missing, so (checked above) not strict.
    first: dict[int, str] = {}
    names = [k for k, v in current.items() if first.setdefault(id(v), k) == k]
    set_model_state_dict(model, {k: state[k] for k in names}, options=_state_dict_options(strict=False))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                         info: DistInfo) -> None:
    """Inverse of optimizer_state_for_checkpoint: integer ids follow the order of the optimizer's
    parameter groups, which `param_groups()` builds the same way under every strategy."""
    if info.parallel != "fsdp":
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    saved = [i for group in state["param_groups"] for i in group["params"]]
    if len(saved) != len(order):
        raise CheckpointError(f"optimizer state holds {len(saved)} parameters, the model has {len(order)}")
    full: Any = {
        "state": {order[i]: value for i, value in state["state"].items()},
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, full, options=_state_dict_options())


def rank_train_state(rng_state: dict[str, Any], info: DistInfo) -> dict[str, Any]:
    """Checkpoint entries of a multi-process run (collective): the world size and strategy, and every
    rank's RNG state (dropout streams differ per rank), so each rank resumes its own stream."""
    if not info.distributed:
        return {}
    states: list[Any] = [None] * info.world_size
    dist.all_gather_object(states, rng_state)
    return {"world_size": info.world_size, "parallel": info.parallel, "rng_ranks": states}


def rank_rng_state(train_state: dict[str, Any], info: DistInfo) -> dict[str, Any]:
    """The RNG state this rank resumes from; a warning when the world size changed since the save."""
    saved = train_state.get("world_size", 1)
    if saved != info.world_size:
        if info.is_main:
            log.warning("the checkpoint was written by %d process%s and training resumes with %d: "
                        "each rank draws its own batch_size rows, so the batches (and dropout) differ "
                        "from an uninterrupted run", saved, "" if saved == 1 else "es", info.world_size)
        return train_state["rng"]
    per_rank = train_state.get("rng_ranks")
    return per_rank[info.rank] if per_rank else train_state["rng"]
