"""Fully sharded data parallel (``trainer=fsdp``): the large blocks of a run sharded over every rank with FSDP2.

What is sharded: every residual or transformer block of the tokenizer (:data:`SHARDED_BLOCKS`) and, through
:meth:`~vtok.losses.LossTerm.shardable_modules`, the decoder layers of a trained LLM. Each such block keeps
``1 / world`` of its parameters, gradients and AdamW state per rank and gathers the rest only for its own forward
and backward. What stays whole on every rank: the bottleneck (its codebook updates run inside ``forward`` and
synchronise themselves), the stems, heads, projector, discriminator and frozen networks; their gradients are
averaged over ranks by :func:`average_replicated_gradients`, as DDP would.

Checkpoints are gathered into one ordinary ``.ckpt`` file on rank 0 (``save_distributed_checkpoint=false``), so
resuming, ``vtok-export`` and ``python -m vtok.eval`` read them like any other run's. The weight EMA is sharded the
same way as the weights (:meth:`vtok.training.EMA.shard_like`).

Lightning's own ``FSDPStrategy`` (FSDP1) needs a GPU; this strategy (FSDP2 through Lightning's
``ModelParallelStrategy``) also runs on CPU processes with gloo, which is how the tests check it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from vtok.distributed import is_distributed, world_size
from vtok.modules.conv import AttnBlock, ResBlock
from vtok.modules.transformer import Block

# The tokenizer's repeated units: each becomes one FSDP unit (its parameters gathered together).
SHARDED_BLOCKS: tuple[type[nn.Module], ...] = (Block, ResBlock, AttnBlock)


class ShardedDataParallel(ModelParallelStrategy):
    """Data parallel over all ranks with FSDP2 sharding (no tensor parallelism); see the module docstring.

    Args:
        process_group_backend: ``nccl`` / ``gloo``; ``None`` picks by device.
        timeout: a collective that waits longer ends the run with an error instead of hanging.
    """

    def __init__(self, process_group_backend: str | None = None, timeout: timedelta | None = None) -> None:
        kwargs = {"timeout": timeout} if timeout is not None else {}
        super().__init__(data_parallel_size="auto", tensor_parallel_size="auto", save_distributed_checkpoint=False,
                         process_group_backend=process_group_backend, **kwargs)

    def setup_environment(self) -> None:
        # one data-parallel dimension over every process of every node
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()


def shard_blocks(modules: Sequence[nn.Module], mesh) -> int:
    """Apply ``fully_shard`` to each module (outermost first is not needed: they must not nest). Returns the count."""
    from torch.distributed.fsdp import fully_shard

    for module in modules:
        fully_shard(module, mesh=mesh)
    return len(modules)


def tokenizer_blocks(tokenizer: nn.Module) -> list[nn.Module]:
    """The tokenizer's :data:`SHARDED_BLOCKS` that hold trainable parameters, outermost only."""
    blocks: list[nn.Module] = []
    for module in tokenizer.modules():
        trainable = any(p.requires_grad for p in module.parameters())
        if isinstance(module, SHARDED_BLOCKS) and trainable and not any(_contains(b, module) for b in blocks):
            blocks.append(module)
    return blocks


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


def average_replicated_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average over ranks the gradients of trainable parameters that are not sharded (DDP's job, done here for
    the parts FSDP leaves whole). A parameter without a gradient on this rank contributes zeros, so every rank
    joins the same collective."""
    if not is_distributed():
        return
    replicated = [p for p in params if p.requires_grad and not isinstance(p, DTensor)]
    if not replicated:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in replicated]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p, g in zip(replicated, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset: offset + n].view_as(g).to(g.dtype)
        offset += n


def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for a mix of sharded (``DTensor``) and whole parameters: the norm is the
    full model's, the same on every rank. Returns the total norm before clipping (a 0-d tensor)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    squares = []
    for g in grads:
        norm = torch.linalg.vector_norm(g, dtype=torch.float32)
        squares.append((norm.full_tensor() if isinstance(norm, DTensor) else norm) ** 2)
    total = torch.stack(squares).sum().sqrt()
    coefficient = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coefficient.to(g.device))
    return total


def full_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """``module.state_dict()`` with every sharded tensor gathered whole (a collective: every rank calls it)."""
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
            for k, v in module.state_dict().items()}
