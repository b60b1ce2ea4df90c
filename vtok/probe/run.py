"""The probe, end to end: tokens of a training stream (cached), a prior trained on them (resumable), and on held-out
images the prior's bits per token, the rate it implies, real coded bytes (round-tripped), and samples."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

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


def train_prior(prior: TokenPrior, sequences: list[Tensor], steps: int, batch_size: int, lr: float,
                warmup_steps: int, state_path: Path, save_every: int, seed: int, device: torch.device,
                max_steps_this_call: int | None = None) -> int:
    """Train ``prior`` on the sequences (next-id cross-entropy, warm-up then cosine over ``steps``), resuming from
    ``state_path`` when it holds a state, stopping (saved) after ``max_steps_this_call`` steps when given; returns the
    steps trained in this call. Batches are drawn from a generator seeded by ``seed`` and the step, so a resumed run
    draws the batches the uninterrupted one would."""
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
    with tqdm(range(start, end), desc="training the prior", unit="step", disable=None) as bar:
        for step in bar:
            draw = torch.Generator().manual_seed(seed * 100_003 + step)
            rows = torch.randint(len(ids), (batch_size,), generator=draw)
            batch, batch_lengths = ids[rows].to(device), lengths[rows].to(device)
            loss = prior.bits(batch, batch_lengths).sum() / batch_lengths.sum()  # bits per token
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(prior.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            bar.set_postfix(bits_per_token=f"{loss.item():.3f}")
            if (step + 1) % save_every == 0 or step + 1 == end:
                tmp = state_path.with_suffix(".tmp")
                torch.save({"prior": prior.state_dict(), "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(), "step": step + 1}, tmp)
                tmp.replace(state_path)
    prior.eval()
    return end - start


@torch.no_grad()
def measure(prior: TokenPrior, sequences: list[Tensor], pixels: int, verify_images: int | None,
            device: torch.device) -> dict[str, Any]:
    """Held-out bits per token under the prior, bits per pixel it implies, and real coded bytes per image (each
    sequence range-coded at the prior's probabilities; the first ``verify_images`` decoded back and compared)."""
    ideal, coded, tokens, verified = [], [], 0, 0
    for index, sequence in enumerate(tqdm(sequences, desc="coding held-out tokens", unit="img", disable=None)):
        padded = torch.cat([sequence, sequence.new_zeros(prior.max_length - len(sequence))])[None].to(device)
        probabilities = prior.probabilities(padded)[0, : len(sequence)].cpu()
        data = encode_sequence(probabilities, sequence)
        if verify_images is None or index < verify_images:
            decoded = decode_sequence(data, len(sequence),
                                      lambda prefix: prior.next_probabilities(prefix, prior.max_length).cpu())
            if not torch.equal(decoded, sequence):
                raise RuntimeError(f"held-out image {index}: the coded tokens did not decode back to themselves")
            verified += 1
        ideal.append(ideal_bits(probabilities, sequence))
        coded.append(8 * len(data))
        tokens += len(sequence)
    n = len(sequences)
    return {
        "images": n, "tokens": tokens, "verified_round_trips": verified,
        "bits_per_token": float(np.sum(ideal) / tokens),
        "bits_per_pixel_under_prior": float(np.sum(ideal) / (n * pixels)),
        "coded_bytes_per_image": float(np.mean(coded) / 8),
        "coded_bits_per_pixel": float(np.sum(coded) / (n * pixels)),
        "coding_overhead": float(np.sum(coded) / max(np.sum(ideal), 1e-9) - 1),
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


def write_samples(tokenizer: Tokenizer, ids: Tensor, layout: tuple[int, ...], path: Path, size: int = 128) -> Path:
    """Decode sampled ids laid out as ``layout`` and write them as one row of tiles."""
    with torch.no_grad():
        images = tokenizer.decode_indices(ids.view(len(ids), *layout)).clamp(-1, 1).cpu()
    tiles = torch.stack([square_tile(x, size) for x in images])
    image_grid(tiles).save(path)
    return path


def seconds_since(start: float) -> float:
    return time.perf_counter() - start
