"""Multi-process training under torchrun: the process group, DDP / FSDP2 wrapping, and the few
collectives the trainer needs (the checkpoint state of a wrapped model is in dist_checkpoint.py).

One process per device. torchrun sets RANK, LOCAL_RANK and WORLD_SIZE (and MASTER_ADDR / PORT);
without them every function here is a no-op and training runs in a single process.
Shapes: tensors keep their parameter / state-dict shapes; nothing here reshapes anything.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from albert_gpt.config import Config, RunConfig
from albert_gpt.errors import ConfigError
from albert_gpt.runtime import resolve_device

log = logging.getLogger("albert_gpt")

TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job; the defaults describe a plain single process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    is_main: bool = True
    parallel: str | None = None  # run.parallel under torchrun ("ddp" | "fsdp"), None otherwise
    owns_group: bool = False  # init_distributed created the process group, so shutdown destroys it
    quieted_level: int | None = None  # the albert_gpt logger's level before a non-main rank quieted it

    @property
    def distributed(self) -> bool:
        return self.parallel is not None


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(run: RunConfig) -> DistInfo:
    """Join the torchrun process group (nccl on CUDA, gloo on CPU); a single process without torchrun.

    Each rank uses cuda:LOCAL_RANK. Ranks other than 0 log errors only.
    """
    device = resolve_device(run)
    present = [name for name in TORCHRUN_VARS if name in os.environ]
    if not present:
        return DistInfo(device=device)
    missing = [name for name in TORCHRUN_VARS if name not in os.environ]
    if missing:
        raise ConfigError(f"incomplete torchrun environment: {', '.join(missing)} not set while "
                          f"{', '.join(present)} is (launch with torchrun, or unset it)")
    rank, local_rank, world_size = (_env_int(name) for name in TORCHRUN_VARS)
    if not 0 <= rank < world_size:
        raise ConfigError(f"RANK {rank} is outside WORLD_SIZE {world_size}")
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank}, but this node has {torch.cuda.device_count()} "
                              "CUDA devices (--nproc_per_node must not exceed the GPUs per node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        except ValueError as exc:  # e.g. MASTER_ADDR missing: the env:// rendezvous explains which
            raise ConfigError(f"cannot join the torchrun process group: {exc}") from None
    elif (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
        raise ConfigError(f"a process group is already initialized as rank {dist.get_rank()} of "
                          f"{dist.get_world_size()}, but RANK/WORLD_SIZE say {rank} of {world_size}")
    quieted = None
    if rank != 0:
        # One voice: ranks take the same decisions and would repeat rank 0's lines and warnings.
        logger = logging.getLogger("albert_gpt")
        quieted = logger.level
        logger.setLevel(logging.ERROR)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device,
                    is_main=rank == 0, parallel=run.parallel, owns_group=owns, quieted_level=quieted)


def shutdown(info: DistInfo) -> None:
    """Leave the process group (if init_distributed created it) and restore the log level."""
    if info.quieted_level is not None:
        logging.getLogger("albert_gpt").setLevel(info.quieted_level)
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def check_parallel_config(cfg: Config, info: DistInfo) -> None:
    """ConfigError for settings FSDP cannot honour (each rank holds only a shard of every gradient)."""
    if info.parallel != "fsdp":
        return
    if cfg.run.dtype == "float16":
        raise ConfigError("run.dtype: float16 is not supported with run.parallel: fsdp (the gradient "
                          "scaler would judge overflow on one shard); use bfloat16")
    if cfg.log.diagnostics_interval > 0:
        raise ConfigError("log.diagnostics_interval: per-depth diagnostics read whole gradients, which "
                          "run.parallel: fsdp shards; use run.parallel: ddp or set it to 0")


def seed_rank(seed: int, info: DistInfo) -> None:
    """Give every rank its own dropout stream. Called after the model is built, so the initial
    weights (drawn from `seed` on every rank) are the same everywhere; rank 0 keeps its stream."""
    if info.rank > 0:
        torch.manual_seed(int(np.random.SeedSequence([seed, info.rank]).generate_state(1)[0]))


# ---------------------------------------------------------------- wrapping

def shard_units(model: Any) -> list[nn.Module]:
    """The modules FSDP shards separately: each distinct block, or, when blocks share a sub-layer
    (model.sharing attention | ffn), each distinct attention and FFN module, since one parameter
    can belong to only one FSDP unit. Whatever is left (embeddings, shared norms) goes to the root."""
    blocks = list(model.blocks)
    parts = [id(part) for block in blocks for part in block.children()]
    if len(parts) == len(set(parts)):
        return blocks
    distinct = {id(m): m for block in blocks for m in (block.attn, block.ffn)}
    return list(distinct.values())


def wrap_model(model: nn.Module, info: DistInfo, parallel: str | None = None) -> nn.Module:
    """The module the training loop calls: DDP(model), or `model` itself sharded in place by FSDP2
    (`fully_shard` per unit of `shard_units`, then the root). Unchanged in a single process."""
    parallel = parallel or info.parallel
    if not info.distributed:
        return model
    if parallel == "ddp":
        # No find_unused_parameters and no static_graph: every parameter takes part in every
        # forward, and autograd sums the gradient of a block applied n times into its one
        # AccumulateGrad node, so DDP's per-parameter hook fires once per backward.
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        mesh = init_device_mesh(info.device.type, (info.world_size,))
        for unit in shard_units(model):
            fully_shard(unit, mesh=mesh)
        fully_shard(model, mesh=mesh)
        # generate() calls next_logits, not forward: it needs the root's gather hooks too.
        register_fsdp_forward_method(model, "next_logits")
        # The root returns logits[..., :vocab_size], a view; nothing modifies it in place.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        return model
    raise ConfigError(f"run.parallel: unknown value {parallel!r} (choose one of: ddp, fsdp)")


@contextlib.contextmanager
def grad_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Around one micro-step's forward and backward: with `sync` false, DDP / FSDP keep the gradient
    local (accumulating micro-steps); the last micro-step reduces the sum once."""
    inner = getattr(model, "_orig_mod", model)  # torch.compile wraps the DDP / FSDP module
    if sync:
        yield
    elif isinstance(inner, nn.parallel.DistributedDataParallel):
        with inner.no_sync():
            yield
    elif hasattr(inner, "set_requires_gradient_sync"):  # an FSDP2 module
        fsdp = cast(Any, inner)
        fsdp.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            fsdp.set_requires_gradient_sync(True)
    else:
        yield


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a DTensor (FSDP's gradient norm is one), the tensor itself otherwise."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


# ---------------------------------------------------------------- collectives

def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def _comm_device() -> torch.device:
    """NCCL reduces device tensors only; gloo takes CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks, as a new tensor (the input itself without a process group)."""
    if not _active():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise mean over ranks (gloo has no AVG, so a sum divided by the world size)."""
    if not _active():
        return tensor
    return all_reduce_sum(tensor) / dist.get_world_size()


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on one: ranks must agree on when to stop."""
    if not _active():
        return flag
    value = torch.tensor([int(flag)], device=_comm_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s picklable `obj` on every rank (a synchronization point too)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if _active():
        dist.barrier()


@contextlib.contextmanager
def node_main_first(info: DistInfo) -> Iterator[None]:
    """The first process of each node (LOCAL_RANK 0) runs the block first, e.g. to build the token
    cache on the node's disk; the others run it after (and reuse what it built)."""
    if info.local_rank != 0:
        barrier()
    yield
    if info.local_rank == 0:
        barrier()


def reduce_evaluation(result: dict[str, Any]) -> dict[str, Any]:
    """Loss and perplexity of the union of the ranks' disjoint shares (from evaluate_tokens with
    rank / world_size): NLL and token counts are summed, then divided, exactly as in one process."""
    local = torch.tensor([result["nll_sum"], float(result["tokens"])], dtype=torch.float64)
    if _active():
        local = all_reduce_sum(local.to(_comm_device())).cpu()
    nll, tokens = local.tolist()
    loss = nll / tokens if tokens else math.nan
    return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf, "tokens": int(tokens),
            "nll_sum": nll}



class NullMetrics:
    """What ranks other than 0 log to: nothing (the run directory is rank 0's alone).

    Same methods as training.metrics.MetricsLogger, each of which drops what it is given.
    """

    def _drop(self, *args: Any, **kwargs: Any) -> None:
        return None

    scalar = scalars = histogram = text = hparams = flush = close = _drop
