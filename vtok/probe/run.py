"""The probe, end to end: tokens of a training stream (cached), a prior trained on them (resumable), and on held-out
images the prior's bits per token, the rate it implies, real coded bytes (round-tripped), and samples."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from vtok.distributed import all_reduce_sum, barrier, broadcast, rank, rank_share, world_size
from vtok.eval.fid import FIDMeter
from vtok.images import image_grid, square_tile
from vtok.tokenizers import Tokenizer

from .coding import decode_sequence, encode_sequence, ideal_bits
from .prior import TokenPrior
from .sequences import token_sequences


def weights_key(tokenizer: Tokenizer) -> str:
    """A short SHA-256 of the tokenizer's config and weights: the token cache is valid for these only."""
    digest = hashlib.sha256(json.dumps(tokenizer.config, sort_keys=True).encode())
    for name, value in sorted(tokenizer.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def encode_images(tokenizer: Tokenizer, batches: Iterable[dict[str, Any]], max_images: int | None,
                  device: torch.device, desc: str) -> tuple[list[Tensor], int, list[Tensor]]:
    """Token sequences of up to ``max_images`` images -> (sequences, pixels per image, the images' ``(3, H, W)``)."""
    sequences: list[Tensor] = []
    images: list[Tensor] = []
    pixels = 0
    with tqdm(total=max_images, desc=desc, unit="img", disable=None) as bar:
        for batch in batches:
            x = batch["image"]
            x = (x[None] if x.ndim == 3 else x)[: (max_images - len(sequences)) if max_images else None]
            if not len(x):
                continue
            sequences += [s.cpu() for s in token_sequences(tokenizer.encode(x.to(device)))]
            images += list(x.cpu())
            pixels = x.shape[-1] * x.shape[-2]
            bar.update(len(x))
            if max_images is not None and len(sequences) >= max_images:
                break
    if not sequences:
        raise ValueError(f"{desc}: no images")
    return sequences, pixels, images


def pad(sequences: list[Tensor]) -> tuple[Tensor, Tensor]:
    """``B`` id sequences -> ``(B, N)`` ids (zero-padded) and ``(B,)`` lengths."""
    lengths = torch.tensor([len(s) for s in sequences])
    ids = torch.zeros(len(sequences), int(lengths.max()), dtype=torch.long)
    for row, s in zip(ids, sequences):
        row[: len(s)] = s
    return ids, lengths


def build_prior(vocab_size: int, length: int, width: int, depth: int, heads: int, seed: int,
                device: torch.device) -> TokenPrior:
    """The prior, initialised from ``seed`` alone (the global RNG untouched) and identical on every rank."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prior = TokenPrior(vocab_size, length, width, depth, heads)
    prior = prior.to(device)
    for parameter in prior.parameters():
        broadcast(parameter.data)
    return prior


def train_prior(prior: TokenPrior, sequences: list[Tensor], steps: int, batch_size: int, lr: float,
                warmup_steps: int, state_path: Path, save_every: int, seed: int, device: torch.device,
                max_steps_this_call: int | None = None) -> int:
    """Train ``prior`` on the sequences (next-id cross-entropy, warm-up then cosine over ``steps``), resuming from
    ``state_path`` when it holds a state, stopping (saved) after ``max_steps_this_call`` steps when given; returns the
    steps trained in this call. Batches are drawn from a generator seeded by ``seed`` and the step, so a resumed run
    draws the batches the uninterrupted one would. Under several ranks every rank draws the same ``batch_size`` rows
    and trains on its every ``world``-th one, gradients averaged over ranks (one global batch, as in one process);
    rank 0 saves the state."""
    rank_index, world = rank(), world_size()
    if batch_size < world:
        raise ValueError(f"probe.batch_size={batch_size} is smaller than the {world} ranks sharing each batch")
    ids, lengths = pad(sequences)
    optimizer = torch.optim.AdamW(prior.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(warmup_steps, 1)) * (
        0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1)))))
    start = 0
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        prior.load_state_dict(state["prior"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start = int(state["step"])
    prior.train()
    end = steps if max_steps_this_call is None else min(steps, start + max_steps_this_call)
    with tqdm(range(start, end), desc="training the prior", unit="step", disable=None if rank_index == 0 else True) \
            as bar:
        for step in bar:
            draw = torch.Generator().manual_seed(seed * 100_003 + step)
            rows = torch.randint(len(ids), (batch_size,), generator=draw)[rank_index::world]
            batch, batch_lengths = ids[rows].to(device), lengths[rows].to(device)
            loss = prior.bits(batch, batch_lengths).sum() / batch_lengths.sum()  # bits per token
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                for parameter in prior.parameters():
                    if parameter.grad is not None:
                        all_reduce_sum(parameter.grad).div_(world)
            torch.nn.utils.clip_grad_norm_(prior.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            bar.set_postfix(bits_per_token=f"{loss.item():.3f}")
            if rank_index == 0 and ((step + 1) % save_every == 0 or step + 1 == end):
                tmp = state_path.with_suffix(".tmp")
                torch.save({"prior": prior.state_dict(), "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(), "step": step + 1}, tmp)
                tmp.replace(state_path)
    barrier()  # the saved state is complete before any rank reads it again
    prior.eval()
    return end - start


@torch.no_grad()
def code_images(prior: TokenPrior, sequences: list[Tensor], positions: Sequence[int], verify_images: int | None,
                device: torch.device) -> list[dict[str, Any]]:
    """Each held-out sequence range-coded at the prior's probabilities: per image its ideal bits (the summed
    ``-log2 p``), coded bits, token count and whether it was decoded back (those whose position in the whole
    held-out set is below ``verify_images``; all when ``None``)."""
    records = []
    for sequence, position in zip(tqdm(sequences, desc="coding held-out tokens", unit="img", disable=None),
                                  positions):
        padded = torch.cat([sequence, sequence.new_zeros(prior.max_length - len(sequence))])[None].to(device)
        probabilities = prior.probabilities(padded)[0, : len(sequence)].cpu()
        data = encode_sequence(probabilities, sequence)
        verified = verify_images is None or position < verify_images
        if verified:
            decoded = decode_sequence(data, len(sequence),
                                      lambda prefix: prior.next_probabilities(prefix, prior.max_length).cpu())
            if not torch.equal(decoded, sequence):
                raise RuntimeError(f"held-out image {position}: the coded tokens did not decode back to themselves")
        records.append({"ideal_bits": ideal_bits(probabilities, sequence), "coded_bits": 8 * len(data),
                        "tokens": len(sequence), "verified": verified})
    return records


def summarize(records: list[dict[str, Any]], pixels: int) -> dict[str, Any]:
    """Per-image coding records (:func:`code_images`, gathered over ranks) -> the held-out figures."""
    ideal = float(np.sum([r["ideal_bits"] for r in records]))
    coded = float(np.sum([r["coded_bits"] for r in records]))
    tokens = int(np.sum([r["tokens"] for r in records]))
    n = len(records)
    return {
        "images": n, "tokens": tokens, "verified_round_trips": int(np.sum([r["verified"] for r in records])),
        "bits_per_token": ideal / tokens,
        "bits_per_pixel_under_prior": ideal / (n * pixels),
        "coded_bytes_per_image": coded / 8 / n,
        "coded_bits_per_pixel": coded / (n * pixels),
        "coding_overhead": coded / max(ideal, 1e-9) - 1,
    }


@torch.no_grad()
def sample(prior: TokenPrior, length: int, count: int, temperature: float, seed: int,
           device: torch.device) -> Tensor:
    """``(count, length)`` ids drawn from the prior one position at a time (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(count, length, dtype=torch.long, device=device)
    for i in range(length):
        logits = prior(ids)[:, i].double().cpu() / max(temperature, 1e-6)
        ids[:, i] = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0].to(device)
    return ids


@torch.no_grad()
def sample_fid(prior: TokenPrior, tokenizer: Tokenizer, fid: FIDMeter, references: list[Tensor], count: int,
               layout: tuple[int, ...], length: int, temperature: float, seed: int, batch_size: int,
               device: torch.device) -> float:
    """Generation FID: ``count`` unconditional samples of the prior (this rank's share of them, each batch from its
    own seed), decoded, against this rank's held-out ``(3, H, W)`` images; the statistics are summed over ranks."""
    for start in range(0, len(references), batch_size):
        fid.update_reference(torch.stack(references[start:start + batch_size]).to(device))
    share = list(rank_share(count))
    for index, start in enumerate(tqdm(range(0, len(share), batch_size), desc="sampling for FID", unit="batch",
                                       disable=None)):
        n = min(batch_size, len(share) - start)
        ids = sample(prior, length, n, temperature, seed * 1_000_003 + share[start] + index, device)
        fid.update_generated(tokenizer.decode_indices(ids.view(n, *layout)).clamp(-1, 1))
    return fid.compute()


def write_samples(tokenizer: Tokenizer, ids: Tensor, layout: tuple[int, ...], path: Path, size: int = 128) -> Path:
    """Decode sampled ids laid out as ``layout`` and write them as one row of tiles."""
    with torch.no_grad():
        images = tokenizer.decode_indices(ids.view(len(ids), *layout)).clamp(-1, 1).cpu()
    tiles = torch.stack([square_tile(x, size) for x in images])
    image_grid(tiles).save(path)
    return path


def seconds_since(start: float) -> float:
    return time.perf_counter() - start
