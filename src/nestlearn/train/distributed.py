"""One run on several processes: the process group, DDP or FSDP2, and the rank logic of the trainer.

Launch with torchrun, which starts one process per GPU (or per CPU slot) and sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``::

    torchrun --nproc_per_node 4 -m nestlearn train --config run.yaml

:func:`setup` sees ``WORLD_SIZE > 1`` and joins the process group (NCCL on CUDA with one device per
local rank, gloo on CPU). A single process never creates a group, so nothing here costs anything
without torchrun.

**The global batch.** One optimizer step consumes ``batch_size × grad_accum × world_size``
windows. Every rank holds the same sampling generator and, for each micro-batch, draws the same
``world_size × batch_size`` window starts; rank r keeps rows ``[r·batch_size, (r+1)·batch_size)``
(:func:`local_rows`). So the ranks' micro-batches are disjoint and their union is exactly the
micro-batch a single process with ``batch_size × world_size`` draws from the same generator state.
Every micro-batch has the same number of tokens, so the mean of the ranks' mean losses (what DDP's
gradient average and FSDP's reduce-scatter compute) is the single-process mean: N processes give
the single-process losses up to the order of floating-point reductions (tested with 2 gloo processes).

**Fast memory states** (KV caches, memory weights, momenta) are per sample, hence per rank: the
training forward starts each window from the initial state and nothing of it is communicated.

**Modes.** ``train.distributed: ddp`` (default) replicates the model and averages gradients during
backward (``no_sync`` on all micro-batches but the last). ``fsdp`` applies FSDP2's
``fully_shard`` to every block and then to the whole model: parameters, gradients and optimizer
states are DTensors sharded on dim 0, gathered block by block for the forward and backward.

**Muon and M3 on sharded parameters** [Interp]: the momentum updates are elementwise and stay on the
local shard; the Newton–Schulz iteration couples all rows of a matrix through its Gram matrix, so
its input is all-gathered (``DTensor.full_tensor()``), every rank orthogonalises the full matrix
(the same bits everywhere) and keeps its own rows (:func:`nestlearn.optim.muon.orthogonalise`).
Gather rather than owner-rank: one all-gather per matrix and step and no scheduling, at the price
of computing each Newton–Schulz iteration on every rank; an owner-rank scheme would spread that
work but needs a scatter per matrix and a load balance. DDP needs nothing: its gradients, and so
its parameters and optimizer states, are identical on every rank. DGD is refused in any
multi-process run (its update reads each layer's local inputs, so the replicas would drift apart);
FSDP accepts ``adamw``, ``muon`` and ``m3``, and not ``cms.signal: lss`` (Hope, Hope-Attention), whose sequence
driver writes CMS levels between block calls, where FSDP has freed the gathered weights.

**Checkpoints** are all-gathered tensor by tensor into full (unsharded) CPU tensors that rank 0
keeps and writes, so they are the single-file checkpoints of a single process: a run resumes under
any mode. Only rank 0 writes
files (metrics, TensorBoard events, plots, reports, checkpoints); every rank reads the checkpoint
on resume, so a multi-node run needs ``train.out_dir`` on a filesystem all nodes see. Every rank
computes the same validation and sample (FSDP's forward is collective, so all ranks must run it).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nestlearn.errors import ConfigError
from nestlearn.optim.muon import is_dtensor

MODES = ("ddp", "fsdp")
FSDP_OPTIMIZERS = ("adamw", "muon", "m3")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the run.

    Attributes:
        rank: global rank, 0 for a single process.
        world_size: number of processes (1: no process group).
        local_rank: rank on this machine (selects the CUDA device).
        mode: ``"single"``, ``"ddp"`` or ``"fsdp"``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    mode: str = "single"

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file of the run."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.mode == "fsdp"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(name, f"environment variable must be an integer, got {raw!r}") from None


def is_main_process() -> bool:
    """Whether this process is rank 0 (from torchrun's ``RANK``; True without torchrun)."""
    return _env_int("RANK", 0) == 0


def resolve_device(name: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """``"auto"``, ``"cpu"`` or ``"cuda"`` as a device; with several processes CUDA means ``cuda:local_rank``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device", "is 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
    if name == "cuda" and world_size > 1:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError("train.device", f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} "
                              "visible); start at most one process per GPU (torchrun --nproc_per_node)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def setup(mode: str, device_name: str) -> tuple[DistContext, torch.device]:
    """Join the process group if torchrun started several processes; return the context and this rank's device.

    An existing process group (one process running several trainers in turn) is reused.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistContext(), resolve_device(device_name)
    import torch.distributed as dist

    if not dist.is_available():
        raise ConfigError("WORLD_SIZE", f"is {world_size} but this torch build has no torch.distributed")
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_name, local_rank, world_size)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, **kwargs)
    if dist.get_world_size() != world_size:
        raise ConfigError("WORLD_SIZE", f"is {world_size} but the existing process group has "
                          f"{dist.get_world_size()} processes")
    return DistContext(dist.get_rank(), world_size, local_rank, mode), device


def shutdown() -> None:
    """Leave the process group (if any) so that every rank exits cleanly."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_optimizer(ctx: DistContext, name: str) -> None:
    """Refuse optimizers whose update is not defined for this mode (see the module docstring)."""
    if ctx.world_size > 1 and name == "dgd":
        raise ConfigError("optim.name", "dgd reads each layer's local inputs, so the processes of a "
                          "multi-process run would drift apart; train DGD in one process")
    if ctx.sharded and name not in FSDP_OPTIMIZERS:
        raise ConfigError("optim.name", f"train.distributed='fsdp' supports {', '.join(FSDP_OPTIMIZERS)}, "
                          f"got {name!r}; use train.distributed='ddp' for it")


def unused_parameters(model: nn.Module, seq_len: int, device: torch.device) -> list[str]:
    """Names of the parameters that get no gradient from a training forward of ``seq_len`` tokens.

    A CMS level whose chunk is longer than the window never writes, so its parameters stay unused;
    one probe forward and backward on a (1, seq_len) batch of zeros finds them. The gradients are
    cleared afterwards.
    """
    tokens = torch.zeros(1, seq_len, dtype=torch.long, device=device)
    model(tokens, targets=tokens, keep_state=False).loss.backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    return unused


class TrainingLoss(nn.Module):
    """``forward(tokens, targets) -> loss``: the training forward of a causal LM, without its fast state.

    DDP marks as used every parameter that produced any output of the forward; the fast state is
    computed by parameters the loss may not depend on (a CMS level that writes only at the end of
    the window), whose gradients would then never arrive. Returning the loss alone avoids that,
    and gives ``torch.compile`` a single tensor output; the model is asked for no state
    (``keep_state=False``), so the writes only that state would hold are skipped.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """tokens, targets: (batch, seq) ids -> mean next-token cross-entropy (scalar)."""
        return self.model(tokens, targets=targets, keep_state=False).loss


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device, seq_len: int) -> nn.Module:
    """The module of the training forward, ``(tokens, targets) -> loss``: :class:`TrainingLoss` of ``model``,
    in a DDP wrapper, or over ``model`` sharded in place by FSDP.

    DDP looks for unused parameters in every step only when a probe (:func:`unused_parameters`)
    finds some; they then keep grad None on every rank, as in one process. FSDP shards every block
    (``model.blocks``) as one unit, then the root (embedding, final norm and head), so at most one
    block's full parameters are materialised at a time.
    """
    if ctx.world_size <= 1:
        return TrainingLoss(model)
    if ctx.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        unused = bool(unused_parameters(model, seq_len, device))
        return DistributedDataParallel(TrainingLoss(model), device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=unused)
    if model.config.sequence_driver() is not None:
        # The driver writes CMS levels between block calls, where FSDP has freed the gathered weights.
        raise ConfigError("train.distributed", f"'fsdp' cannot shard {model.config.family!r} with "
                          "model.cms.signal='lss' (its sequence driver reads block weights outside the "
                          "blocks' forward); use 'ddp'")
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        raise ConfigError("train.distributed", f"'fsdp' needs torch >= 2.6 (FSDP2's fully_shard); this is "
                          f"torch {torch.__version__}: use 'ddp'") from None

    # FSDP warns when a sharded module returns a view, in case it is later modified in place. The
    # blocks' fast states (KV caches) are views, but nothing writes into a block's outputs.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device.type, (ctx.world_size,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return TrainingLoss(model)


def grad_sync(wrapped: nn.Module, ctx: DistContext, last: bool) -> contextlib.AbstractContextManager:
    """Context for one micro-batch's backward: DDP skips the all-reduce on all micro-batches but the last.

    FSDP reduce-scatters every micro-batch (the default), which keeps gradients sharded between them.
    """
    if ctx.mode == "ddp" and ctx.world_size > 1 and not last:
        return wrapped.no_sync()
    return contextlib.nullcontext()


def local_rows(batch: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Rank r's rows ``[r·b, (r+1)·b)`` of a global micro-batch of ``world_size × b`` rows."""
    per = batch.shape[0] // ctx.world_size
    return batch[ctx.rank * per:(ctx.rank + 1) * per]


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op for one process); returns it."""
    if ctx.world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects; used for the BPE tokenizer)."""
    if ctx.world_size <= 1:
        return obj
    import torch.distributed as dist

    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: all-gathered from its shards for a DTensor (collective), the tensor itself otherwise."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def gather_full(obj: Any, keep: bool = True) -> Any:
    """A copy of a nested dict/list/tuple structure with every tensor whole and on the CPU.

    Every rank must call it with the same structure: each DTensor is all-gathered in turn and moved
    to the CPU, so at most one full tensor sits on the accelerator at a time. ``keep=False`` (the
    ranks that do not write) drops each tensor once gathered and returns None in its place.
    """
    if isinstance(obj, torch.Tensor):
        whole = full_tensor(obj)
        return whole.detach().cpu() if keep else None
    if isinstance(obj, dict):
        return {k: gather_full(v, keep) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(gather_full(v, keep) for v in obj)
    return obj


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``full`` laid out as ``like`` if that is a DTensor of the same shape, else ``full``.

    No communication: every rank holds ``full`` (read from the checkpoint).
    """
    if not (is_dtensor(like) and isinstance(full, torch.Tensor) and full.shape == like.shape):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None)


def shard_optimizer_state(optimizer: torch.optim.Optimizer, state_dict: Any) -> Any:
    """Turn a full optimizer ``state_dict`` (as one process saves it) into this rank's sharded one.

    Every state tensor with the full shape of its (sharded) parameter becomes a shard laid out like
    the parameter; scalars such as ``step`` stay. Understands torch optimizers and the nestlearn
    wrappers (:class:`~nestlearn.optim.routing.CombinedOptimizer`,
    :class:`~nestlearn.optim.periodic.PeriodicOptimizer`); a dict that does not fit is returned as
    it is, for ``load_state_dict`` to reject with its own message.
    """
    if not isinstance(state_dict, dict):
        return state_dict
    children = getattr(optimizer, "optimizers", None)
    if children is not None and isinstance(state_dict.get("optimizers"), list):
        return {**state_dict, "optimizers": [shard_optimizer_state(child, sd)
                                             for child, sd in zip(children, state_dict["optimizers"])]}
    inner = getattr(optimizer, "optimizer", None)
    if inner is not None and isinstance(state_dict.get("periodic"), dict):
        periodic = state_dict["periodic"]
        buffers = [None if b is None else shard_like(b, p) for b, p in zip(periodic["buffers"], optimizer.params)]
        return {**state_dict, "optimizer": shard_optimizer_state(inner, state_dict["optimizer"]),
                "periodic": {**periodic, "buffers": buffers}}
    if not isinstance(state_dict.get("state"), dict):
        return state_dict
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for index, entry in state_dict["state"].items():
        param = params[int(index)] if 0 <= int(index) < len(params) else None
        state[index] = entry if param is None else {k: shard_like(v, param) for k, v in entry.items()}
    return {**state_dict, "state": state}
