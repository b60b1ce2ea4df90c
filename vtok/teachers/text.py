"""A frozen text encoder: captions -> one sentence embedding each (mean of token states, as sentence models do)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .bytes import BOS, EOS, PAD, VOCAB, ByteTokenizer
from .loading import Frozen, load_transformers_model


class TextEncoder(Frozen):
    """``list[str]`` -> ``(B, dim)`` embeddings, frozen.

    Args:
        source: folder or hub id of an ``AutoModel`` with its tokenizer (e.g. a MiniLM sentence encoder).
        config: build a random encoder from a ``transformers`` config instead (toy runs; said in the log); its
            tokenizer is then ``bytes`` (UTF-8 bytes as ids), so it needs no vocabulary file either.
        max_length: tokens kept per caption.
        normalize: l2-normalise the embeddings.
        cache_size: captions whose embeddings are kept (the encoder is frozen, so a caption always embeds the
            same): a data set's captions come back every epoch. 0 turns the cache off.
        config_key: the key named when ``source`` cannot be loaded.
    """

    def __init__(self, source: str | None = None, config: dict[str, Any] | None = None, max_length: int = 64,
                 normalize: bool = True, cache_size: int = 4096, config_key: str = "text_encoder.source") -> None:
        model = load_transformers_model(source, config, config_key, "text encoder")
        super().__init__(model)
        if source:
            from transformers import AutoTokenizer

            self.__dict__["tokenizer"] = AutoTokenizer.from_pretrained(str(source))
        else:
            self.__dict__["tokenizer"] = ByteTokenizer()
            if model.config.vocab_size < VOCAB:
                raise ValueError(f"a text encoder built from a config reads UTF-8 bytes: vocab_size must be at "
                                 f"least {VOCAB}, got {model.config.vocab_size}")
        self.max_length, self.normalize = max_length, normalize
        self.cache_size = cache_size
        self.__dict__["cache"] = OrderedDict()  # caption -> (dim,) embedding on the CPU
        self.dim = int(model.config.hidden_size)
        self.register_buffer("_device_marker", torch.zeros(()), persistent=False)

    def tokenize(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        """``(B, T)`` ids and attention mask."""
        if not isinstance(self.tokenizer, ByteTokenizer):
            batch = self.tokenizer(list(captions), padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt")
            return batch["input_ids"], batch["attention_mask"]
        rows = [[BOS, *self.tokenizer.encode(c)[: self.max_length - 2], EOS] for c in captions]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), PAD, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return ids, mask

    @torch.no_grad()
    def forward(self, captions: list[str]) -> Tensor:
        """``B`` captions -> ``(B, dim)`` embeddings (mean over each caption's tokens)."""
        if len(set(captions)) > self.cache_size:  # no cache, or a batch larger than it
            return self._embed(list(captions))
        new = list(dict.fromkeys(c for c in captions if c not in self.cache))
        if new:
            for caption, embedding in zip(new, self._embed(new).cpu()):
                self.cache[caption] = embedding
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        for caption in captions:
            self.cache.move_to_end(caption)
        return torch.stack([self.cache[c] for c in captions]).to(self._device_marker.device)

    def _embed(self, captions: list[str]) -> Tensor:
        ids, mask = self.tokenize(captions)
        device = self._device_marker.device
        ids, mask = ids.to(device), mask.to(device)
        states = self.network(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        weights = mask.unsqueeze(-1).float()
        pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled
