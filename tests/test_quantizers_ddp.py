"""Codebook state under torch.distributed: 2 CPU processes (gloo), each feeding different data."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vtok.quantizers import build_quantizer
from vtok.quantizers.entropy import codebook_entropy_exact, codebook_entropy_factorized


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)  # same initial codebook
    vq = build_quantizer({"kind": "vq", "dim": 8, "codebook_size": 64, "codebook_dim": 4, "ema_decay": 0.9,
                          "kmeans_iters": 3, "restart_threshold": 0.5, "restart_decay": 0.5})
    data = torch.Generator().manual_seed(100 + rank)  # different data on each rank
    for step in range(6):
        vq(torch.randn(256, 8, generator=data) + 3 * rank)
        torch.manual_seed(1000 * rank + step)  # rank-dependent RNG: restarts must still agree
    logits = torch.randn(128, 6, generator=data, dtype=torch.float64)
    entropies = torch.stack([codebook_entropy_exact(logits), codebook_entropy_factorized(logits)])
    torch.save({"codebook": vq.codebook.clone(), "logits": logits, "entropies": entropies},
               f"{out_dir}/rank{rank}.pt")
    dist.barrier()  # no rank tears down gloo while another still talks to it
    dist.destroy_process_group()
    # The results are on disk. Skip interpreter teardown: under CPU load torch's gloo threads occasionally
    # abort there ("terminate called without an active exception"), after all work is done.
    os._exit(0)


def test_codebooks_and_batch_entropy_agree_across_ranks(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["codebook"], r1["codebook"])
    assert torch.equal(r0["entropies"], r1["entropies"])
    both = torch.cat([r0["logits"], r1["logits"]])
    assert torch.allclose(r0["entropies"][0], codebook_entropy_exact(both))
    assert torch.allclose(r0["entropies"][1], codebook_entropy_factorized(both))
    # and it is not just one rank's value
    assert not torch.allclose(r0["entropies"][0], codebook_entropy_exact(r0["logits"]))
