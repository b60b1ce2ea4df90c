"""Lightning strategies whose ranks wait for each other to start apart from the collectives' timeout.

Lightning starts the process group with one ``timeout`` for both the arrival of every rank and each later
collective, so a short collective timeout (to end a stalled run quickly) also kills a run whose nodes start
slowly. These strategies first join the group through :func:`vtok.distributed.join_process_group`, which waits
``rendezvous_timeout`` for every rank, then hand over to Lightning (which finds the group running).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from lightning.pytorch.strategies import DDPStrategy

from vtok.distributed import join_process_group

DEFAULT_RENDEZVOUS = timedelta(minutes=30)


class RendezvousFirst:
    """Mixin for a Lightning strategy with a cluster environment: ``join`` before Lightning's own set-up."""

    rendezvous_timeout: timedelta = DEFAULT_RENDEZVOUS

    def join(self: Any) -> None:
        self.set_world_ranks()
        env = self.cluster_environment
        join_process_group(self._get_process_group_backend(), env.global_rank(), env.world_size(), env.main_address,
                           env.main_port, self._timeout, self.rendezvous_timeout, self.root_device)


class DataParallel(RendezvousFirst, DDPStrategy):
    """Lightning's DDP (``trainer=ddp``) with a rendezvous limit of its own.

    Args:
        process_group_backend: ``nccl`` / ``gloo``; ``None`` picks by device.
        timeout: a collective that waits longer ends the run with an error instead of hanging.
        rendezvous_timeout: how long ranks wait for each other to start.
        **kwargs: Lightning's ``DDPStrategy`` arguments.
    """

    def __init__(self, process_group_backend: str | None = None, timeout: timedelta | None = None,
                 rendezvous_timeout: timedelta | None = None, **kwargs: Any) -> None:
        super().__init__(process_group_backend=process_group_backend,
                         **({"timeout": timeout} if timeout is not None else {}), **kwargs)
        self.rendezvous_timeout = rendezvous_timeout or DEFAULT_RENDEZVOUS

    def setup_distributed(self) -> None:
        self.join()
        super().setup_distributed()
