"""Gradient and buffer synchronization of a GAN under DDP: one all-reduce per optimizer step, of the stepping network.

Lightning wraps the whole LightningModule (G and D) in one ``DistributedDataParallel``. Its reducer expects every
parameter to get a gradient in every backward pass, which a GAN step never gives (G sits out D's step, D is frozen
in G's), and with ``find_unused_parameters=True`` it all-reduces the buckets of both networks at every backward.
:class:`~lightning_regan.GANModule` instead runs each backward under DDP's public ``no_sync()`` (the reducer stays
idle) and then all-reduces the flattened gradients of the network about to step, once, as StyleGAN3's training loop
does. The functions here are that reduction (and the random states of every rank, for checkpoints); they do
nothing on a single process.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


def ddp_model(strategy: Any) -> Optional[DistributedDataParallel]:
    """The ``DistributedDataParallel`` wrapper of a Lightning strategy (``strategy.model``), or ``None``."""
    model = getattr(strategy, "model", None)
    return model if isinstance(model, DistributedDataParallel) else None


def optimizer_parameters(optimizer: Any) -> list[Tensor]:
    """The parameters an optimizer (or Lightning's ``LightningOptimizer``) steps, in a fixed order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def all_reduce_gradients(params: Iterable[Tensor], group: Any = None) -> int:
    """Average the gradients of ``params`` over the ranks of ``group``: one all-reduce per dtype.

    The gradients of the parameters that require one are flattened into one buffer (a parameter without a gradient
    on this rank contributes zeros), summed over the ranks, divided by the world size and copied back in place. The
    buffer carries one more element, the number of parameters that had a gradient, so that ranks which disagree on
    that raise a clear error instead of silently diverging. Scaled (AMP) or non-finite gradients are reduced as they
    are: every rank then sees the same infinities and GradScaler skips the step on all of them alike.

    Args:
        params: The stepping network's parameters (e.g. :func:`optimizer_parameters`), the same list on every rank.
        group: Process group (``None``: the default group).

    Returns:
        The number of bytes all-reduced (0 on a single process).
    """
    world = dist.get_world_size(group)
    params = [p for p in params if p.requires_grad]
    if world == 1 or not params:
        return 0
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            raise RuntimeError("GANModule's DDP gradient reduction supports dense gradients only (got a sparse one).")
        by_dtype.setdefault(p.dtype, []).append(p)
    sent = 0
    for tensors in by_dtype.values():
        present = [p.grad is not None for p in tensors]
        parts = [p.grad.reshape(-1) if has else p.new_zeros(p.numel()) for p, has in zip(tensors, present)]
        parts.append(tensors[0].new_full((1,), float(sum(present))))
        flat = torch.cat(parts)
        dist.all_reduce(flat, group=group)
        flat.div_(world)
        sent += flat.numel() * flat.element_size()
        # Only a rank that lacks a gradient reads the count back (a host sync); with all gradients present every
        # rank sent the same count.
        if not all(present) and float(flat[-1]) != sum(present):
            missing = [i for i, has in enumerate(present) if not has]
            raise RuntimeError(
                f"DDP: the ranks disagree on which parameters of the stepping network got a gradient (this rank has "
                f"none for parameters {missing} of its optimizer). Which parameters a GAN step uses must not depend on "
                "the rank's data, as for DDP without find_unused_parameters."
            )
        for p, chunk, has in zip(tensors, flat[:-1].split([p.numel() for p in tensors]), present):
            if has:
                p.grad.copy_(chunk.view(p.grad.shape))
    return sent


def broadcast_buffers(modules: Sequence[nn.Module], group: Any = None) -> int:
    """Copy rank 0's buffers of ``modules`` (e.g. BatchNorm running statistics) to every rank, one broadcast per dtype.

    This is what DDP's ``broadcast_buffers=True`` does at every forward; it is needed here because the GAN step keeps
    DDP's own machinery idle. Returns the number of bytes broadcast (0 when there is nothing to send).
    """
    if dist.get_world_size(group) == 1:
        return 0
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for module in modules:
        for buffer in module.buffers():
            by_dtype.setdefault(buffer.dtype, []).append(buffer)
    src = dist.get_global_rank(group, 0) if group is not None else 0
    sent = 0
    for buffers in by_dtype.values():
        flat = torch.cat([b.reshape(-1) for b in buffers])
        dist.broadcast(flat, src=src, group=group)
        sent += flat.numel() * flat.element_size()
        for b, chunk in zip(buffers, flat.split([b.numel() for b in buffers])):
            b.copy_(chunk.view(b.shape))
    return sent


def gather_rng_states(device: torch.device) -> dict[str, Tensor]:
    """The global random states (CPU, and CUDA on a CUDA ``device``) of every rank, stacked on a leading rank
    dimension (gathered under ``torch.distributed``; one row on a single process)."""
    local = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        local["cuda"] = torch.cuda.get_rng_state(device)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return {k: v.unsqueeze(0) for k, v in local.items()}
    gathered = {}
    for key, value in local.items():
        value = value.to(device)  # NCCL gathers device tensors only
        parts = [torch.empty_like(value) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, value)
        gathered[key] = torch.stack(parts).cpu()
    return gathered


def set_rng_states(states: Mapping[str, Tensor], rank: int, device: torch.device) -> None:
    """Put back row ``rank`` of :func:`gather_rng_states`' states."""
    # clone(): torch.set_rng_state crashes (segfault, torch 2.14) on a view with a storage offset, e.g. states[1].
    torch.set_rng_state(states["cpu"][rank].clone().cpu())
    if "cuda" in states and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"][rank].clone().cpu(), device)


__all__ = ["all_reduce_gradients", "broadcast_buffers", "ddp_model", "gather_rng_states", "optimizer_parameters",
           "set_rng_states"]
