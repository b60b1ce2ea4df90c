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

import logging
from collections.abc import Iterable, Sequence
from datetime import timedelta
from functools import partial
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor, nn

from vtok.distributed import all_reduce_sum, fully_shard, is_distributed, is_sharded, whole, world_size
from vtok.modules.adaln import AdaLNBlock
from vtok.modules.conv import AttnBlock, ResBlock
from vtok.modules.transformer import Block
from vtok.tokenizers.titok import MaskgitResBlock, TitokBlock

from .strategies import DEFAULT_RENDEZVOUS, RendezvousFirst

log = logging.getLogger(__name__)

# The tokenizer's repeated units: each becomes one FSDP unit (its parameters gathered together).
SHARDED_BLOCKS: tuple[type[nn.Module], ...] = (Block, AdaLNBlock, ResBlock, AttnBlock, TitokBlock, MaskgitResBlock)


class ShardedDataParallel(RendezvousFirst, ModelParallelStrategy):
    """Data parallel over all ranks with FSDP2 sharding (no tensor parallelism); see the module docstring.

    Args:
        process_group_backend: ``nccl`` / ``gloo``; ``None`` picks by device.
        timeout: a collective that waits longer ends the run with an error instead of hanging.
        rendezvous_timeout: how long ranks wait for each other to start.
    """

    def __init__(self, process_group_backend: str | None = None, timeout: timedelta | None = None,
                 rendezvous_timeout: timedelta | None = None) -> None:
        kwargs = {"timeout": timeout} if timeout is not None else {}
        super().__init__(data_parallel_size="auto", tensor_parallel_size="auto", save_distributed_checkpoint=False,
                         process_group_backend=process_group_backend, **kwargs)
        self.rendezvous_timeout = rendezvous_timeout or DEFAULT_RENDEZVOUS

    def _setup_distributed(self) -> None:
        self.join()
        super()._setup_distributed()

    def setup_environment(self) -> None:
        # one data-parallel dimension over every process of every node
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()


def shard_blocks(modules: Sequence[nn.Module], mesh) -> int:
    """Apply ``fully_shard`` to each module (outermost first is not needed: they must not nest). Returns the count."""
    for module in modules:
        fully_shard(module, mesh=mesh)
    return len(modules)


def shard_for_fsdp(tokenizer: nn.Module, loss: Any, ema: Any, mesh: Any, parameters: Iterable[nn.Parameter]) -> None:
    """Shard the tokenizer's blocks and the loss terms' large modules over ``mesh``, and the EMA like them; logs
    how much of the trainable model that covers (``parameters``: the whole training module's)."""
    blocks = [*tokenizer_blocks(tokenizer), *loss.shardable_modules()]
    shard_blocks(blocks, mesh)
    sharded = sum(p.numel() for block in blocks for p in block.parameters())  # whole sizes (DTensor numel)
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    log.info("trainer=fsdp: %d blocks sharded over %d ranks, %.2f M of %.2f M trainable parameters (the rest "
             "stays whole on every rank)", len(blocks), mesh.size(), sharded / 1e6, trainable / 1e6)
    if ema is not None:
        ema.shard_like(tokenizer)


def clip_gradients(tokenizer: nn.Module, loss: Any, optimizer: Any, max_norm: float, sharded: bool
                   ) -> tuple[Tensor, Tensor]:
    """One training step's gradients made ready: under FSDP the whole parts averaged over ranks, then tokenizer
    (with the terms' heads) and discriminator clipped separately to ``max_norm`` (0: measured, not clipped, since
    the norm is also what tells a non-finite gradient). Returns ``(tokenizer norm, discriminator norm)``; the
    second is the first without a discriminator."""
    if sharded:  # FSDP reduced the blocks' gradients; the whole parts are averaged here
        average_replicated_gradients(p for group in optimizer.param_groups for p in group["params"])
    clip = clip_grad_norm if sharded else partial(torch.nn.utils.clip_grad_norm_, foreach=True)
    limit = max_norm or float("inf")
    norm = clip([*tokenizer.parameters(), *loss.head_parameters()], limit)
    return norm, clip(loss.discriminator.parameters(), limit) if loss.discriminator is not None else norm


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
    replicated = [p for p in params if p.requires_grad and not is_sharded(p)]
    if not replicated:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in replicated]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    all_reduce_sum(flat)
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
        squares.append(whole(norm) ** 2)
    total = torch.stack(squares).sum().sqrt()
    coefficient = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coefficient.to(g.device))
    return total


def full_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """``module.state_dict()`` with every sharded tensor gathered whole (a collective: every rank calls it)."""
    return {k: whole(v).detach().clone() for k, v in module.state_dict().items()}
