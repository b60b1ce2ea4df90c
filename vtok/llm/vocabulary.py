"""``ImageVocabulary``: a causal LM that reads *and writes* a tokenizer's codes as token ids of its own.

SEED-LLaMA's and LaVIT's "see and draw", AURORA's perception tokens: the codebook joins the LM's vocabulary. With
``V`` text ids, id ``V`` begins an image, ``V + 1`` ends it, and ``V + 2 + c`` is code ``c``. The new ids' input
and output rows are parameters of their own beside the LM (the LM's ``V`` rows are never touched, frozen or not);
:meth:`ImageVocabulary.merged_model` writes them into a resized copy of the LM for ``generate`` elsewhere. When the
LM ties its input and output embeddings, the new ids share one row too, as a resize would make them.

Two kinds of sequence, chosen per image (``text_to_image`` is the share of the second)::

    image -> text:  [bos] [boi] codes [eoi] caption prompt  caption [eos]      loss on the caption and eos
    text -> image:  [bos] image prompt caption [boi]  codes [eoi]              loss on the codes and eoi
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vtok.teachers.loading import Frozen

from .bridge import IGNORE, load_causal_lm, text_ids

log = logging.getLogger(__name__)

DIRECTIONS = ("image_to_text", "text_to_image")


class ImageVocabulary(nn.Module):
    """A causal LM with ``codebook_size`` image ids and begin/end-of-image ids added to its vocabulary.

    Args:
        codebook_size: the tokenizer's distinct token ids ``K``.
        source, gguf_file, config, train, lora, gradient_checkpointing, config_key: the LM, as
            :class:`~vtok.llm.bridge.ImageToText` takes them (``train``: ``frozen`` trains only the new rows).
        caption_prompt: the text between an image and its caption (image -> text).
        image_prompt: the text before a caption that asks for an image (text -> image).
        text_to_image: share of the sequences that go text -> image.
        max_caption_tokens: captions are cut to this many tokens.
    """

    def __init__(self, codebook_size: int, source: str | None = None, gguf_file: str | None = None,
                 config: dict[str, Any] | None = None, train: str = "frozen", lora: dict[str, Any] | None = None,
                 caption_prompt: str = "Describe this image.", image_prompt: str = "An image of:",
                 text_to_image: float = 0.5, max_caption_tokens: int = 64, gradient_checkpointing: bool = False,
                 config_key: str = "llm.source") -> None:
        super().__init__()
        if not 0.0 <= text_to_image <= 1.0:
            raise ValueError(f"text_to_image={text_to_image}: a share between 0 and 1")
        held, self.tokenizer, model = load_causal_lm(source, gguf_file, config, train, lora, gradient_checkpointing,
                                                     config_key)
        table = model.get_input_embeddings().weight
        self.text_vocab, self.hidden_size = int(table.shape[0]), int(table.shape[1])
        self.tied = bool(getattr(model.config, "tie_word_embeddings", False))
        self.lm, self.train_mode = held, train
        self.codebook_size = codebook_size
        self.input_rows = nn.Parameter(torch.zeros(codebook_size + 2, self.hidden_size))
        self.output_rows = None if self.tied else nn.Parameter(torch.zeros(codebook_size + 2, self.hidden_size))
        self.caption_prompt, self.image_prompt = caption_prompt, image_prompt
        self.text_to_image, self.max_caption_tokens = text_to_image, max_caption_tokens
        self.source, self.gguf_file = source, gguf_file

    # --------------------------------------------------------------------------------------------- ids
    @property
    def language_model(self) -> nn.Module:
        return self.lm.network if isinstance(self.lm, Frozen) else self.lm

    @property
    def begin_image(self) -> int:
        return self.text_vocab

    @property
    def end_image(self) -> int:
        return self.text_vocab + 1

    @property
    def vocab_size(self) -> int:
        """Text ids, the two image markers and the codes."""
        return self.text_vocab + 2 + self.codebook_size

    def image_ids(self, codes: Tensor) -> Tensor:
        """Code indices ``(N,)`` -> their token ids in the extended vocabulary."""
        return codes.long() + self.text_vocab + 2

    def codes(self, ids: Tensor) -> Tensor:
        """Token ids of codes -> code indices (the inverse of :meth:`image_ids`)."""
        return ids.long() - self.text_vocab - 2

    def new_parameters(self) -> list[nn.Parameter]:
        """The added rows (trained in every mode)."""
        return [self.input_rows, *([self.output_rows] if self.output_rows is not None else [])]

    def llm_parameters(self) -> list[nn.Parameter]:
        """The LM's own trainable weights: none when frozen, adapters with LoRA, all when fully trained."""
        return [p for p in self.lm.parameters() if p.requires_grad]

    @torch.no_grad()
    def initialise(self, code_vectors: Tensor | None, seed: int = 0, scale: float = 0.1) -> None:
        """Set the new rows to the LM's mean row plus an offset per id: for a code, its ``(K, D)`` vector through
        a fixed random projection to the LM's width (``None``: a random direction), for the markers noise; each
        offset ``scale`` times the LM's mean row norm long.

        Starting near the mean row (as ``transformers``' mean resizing does) keeps the new ids from swamping the
        LM's predictions at first: rows at the full row norm start tens of nats off. The projection keeps the
        tokenizer's geometry, so codes it put close start close."""
        table = self.language_model.get_input_embeddings().weight.float()
        norm = float(table.norm(dim=-1).mean())
        generator = torch.Generator().manual_seed(seed)
        if code_vectors is None:
            offsets = torch.randn(self.codebook_size, self.hidden_size, generator=generator)
        else:
            vectors = code_vectors.detach().float().cpu()
            vectors = vectors - vectors.mean(0)
            projection = torch.randn(vectors.shape[1], self.hidden_size, generator=generator)
            offsets = vectors @ projection / math.sqrt(vectors.shape[1])
        offsets = torch.cat([torch.randn(2, self.hidden_size, generator=generator), offsets])
        offsets = offsets / offsets.norm(dim=-1, keepdim=True).clamp_min(1e-8) * norm * scale
        rows = (table.mean(0).cpu() + offsets).to(self.input_rows)
        self.input_rows.copy_(rows)
        if self.output_rows is not None:
            self.output_rows.copy_(rows)

    # ----------------------------------------------------------------------------------------- sequences
    def _text(self, text: str) -> list[int]:
        return text_ids(self.tokenizer, text)

    def _bos(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [bos] if bos is not None else []

    def sequence(self, codes: Tensor, caption: str, direction: str) -> tuple[list[int], list[int]]:
        """One image's code indices ``(N,)`` and its caption -> ``(ids, labels)`` of one training sequence
        (labels ``-100`` where there is no loss)."""
        image = [self.begin_image, *self.image_ids(codes.cpu()).tolist(), self.end_image]
        caption_ids = self._text(caption)[: self.max_caption_tokens]
        if direction == "image_to_text":
            eos = self.tokenizer.eos_token_id
            prefix = self._bos() + image + self._text(f"{self.caption_prompt}\n" if self.caption_prompt else "")
            target = caption_ids + ([eos] if eos is not None else [])
        elif direction == "text_to_image":
            prefix = self._bos() + self._text(f"{self.image_prompt} " if self.image_prompt else "") + caption_ids + \
                [self.begin_image]
            target = image[1:]
        else:
            raise ValueError(f"direction={direction!r}: one of {DIRECTIONS}")
        return prefix + target, [IGNORE] * len(prefix) + target

    def embed(self, ids: Tensor) -> Tensor:
        """``(B, T)`` ids of the extended vocabulary -> ``(B, T, hidden)`` input embeddings."""
        text = ids < self.text_vocab
        table = self.language_model.get_input_embeddings()
        out = table(ids.clamp(max=self.text_vocab - 1))
        new = self.input_rows.to(out.dtype)[(ids - self.text_vocab).clamp(min=0)]
        return torch.where(text[..., None], out, new)

    def logits(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``(B, T)`` ids -> ``(B, T, vocab_size)`` next-token logits over text, markers and codes."""
        out = self.language_model(inputs_embeds=self.embed(ids), attention_mask=attention_mask,
                                  output_hidden_states=True)
        hidden = out.hidden_states[-1]
        rows = self.output_rows if self.output_rows is not None else self.input_rows
        return torch.cat([out.logits[..., : self.text_vocab].float(), (hidden @ rows.to(hidden.dtype).T).float()],
                         dim=-1)

    def batch(self, sequences: list[tuple[list[int], list[int]]], device: torch.device
              ) -> tuple[Tensor, Tensor, Tensor]:
        """``(ids, labels)`` pairs -> right-padded ``ids``, ``attention_mask`` and ``labels``, each ``(B, T)``."""
        length = max(len(ids) for ids, _ in sequences)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(sequences), length), pad, dtype=torch.long, device=device)
        labels = torch.full_like(ids, IGNORE)
        mask = torch.zeros_like(ids)
        for b, (row, label) in enumerate(sequences):
            ids[b, : len(row)] = torch.tensor(row, device=device)
            labels[b, : len(label)] = torch.tensor(label, device=device)
            mask[b, : len(row)] = 1
        return ids, mask, labels

    def loss(self, codes: list[Tensor], captions: list[str], directions: list[str]) -> dict[str, Tensor]:
        """Mean next-token loss over the labelled positions: ``{"loss"}`` over all, per direction present
        (``image_to_text``, ``text_to_image``: the latter over code ids and the end-of-image id),
        ``image_codes`` over the code ids alone, and ``image_codes_among_codes`` there with the softmax over the
        code ids only (the choice generation makes)."""
        device = self.input_rows.device
        ids, mask, labels = self.batch([self.sequence(c, t, d) for c, t, d in zip(codes, captions, directions)],
                                       device)
        logits = self.logits(ids, mask)[:, :-1]
        targets = labels[:, 1:]
        per_token = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                                    reduction="none").view_as(targets)
        counted = targets != IGNORE
        out = {"loss": per_token[counted].mean()}
        codes_only = counted & (targets >= self.text_vocab + 2)
        if codes_only.any():
            out["image_codes"] = per_token[codes_only].mean()
            # What generation faces: it samples among the code ids only, so the text ids' share drops out.
            among = logits[codes_only][:, self.text_vocab + 2:]
            out["image_codes_among_codes"] = F.cross_entropy(among, self.codes(targets[codes_only]))
        for direction in DIRECTIONS:
            rows = torch.tensor([d == direction for d in directions], device=device)[:, None] & counted
            if rows.any():
                out[direction] = per_token[rows].mean()
        return out

    # ---------------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate_codes(self, caption: str, length: int, temperature: float = 1.0, top_k: int | None = None,
                       seed: int = 0, stop: bool = False) -> Tensor:
        """Sample an image's code indices ``(n,)`` after ``caption``: ``length`` codes, or fewer when ``stop``
        lets the LM end the image (dynamic-length tokenizers); only code ids (and end-of-image) can be drawn."""
        device = self.input_rows.device
        prefix, _ = self.sequence(torch.zeros(0, dtype=torch.long), caption, "text_to_image")
        ids = torch.tensor([prefix[: len(prefix) - 1]], device=device)  # up to and including begin-of-image
        generator = torch.Generator().manual_seed(seed)
        codes: list[int] = []
        for _ in range(length):
            logits = self.logits(ids, torch.ones_like(ids))[0, -1].double().cpu()
            allowed = torch.full_like(logits, float("-inf"))
            allowed[self.text_vocab + 2:] = 0
            if stop and codes:
                allowed[self.end_image] = 0
            logits = logits + allowed
            if top_k:
                logits[logits < logits.topk(top_k).values[-1]] = float("-inf")
            drawn = int(torch.multinomial((logits / max(temperature, 1e-6)).softmax(-1), 1, generator=generator))
            if drawn == self.end_image:
                break
            codes.append(drawn - self.text_vocab - 2)
            ids = torch.cat([ids, torch.tensor([[drawn]], device=device)], dim=1)
        return torch.tensor(codes, dtype=torch.long)

    @torch.no_grad()
    def merged_model(self) -> nn.Module:
        """A copy of the LM with its embedding (and untied output) layer resized to :attr:`vocab_size` and the
        new rows written in: a plain ``transformers`` model that reads and writes image ids."""
        import copy

        model = copy.deepcopy(self.language_model)
        if hasattr(model, "merge_and_unload"):  # LoRA: fold the adapters in
            model = model.merge_and_unload()
        model.resize_token_embeddings(self.vocab_size, mean_resizing=False)
        model.get_input_embeddings().weight[self.text_vocab:] = self.input_rows.to(model.dtype)
        if self.output_rows is not None:
            model.get_output_embeddings().weight[self.text_vocab:] = self.output_rows.to(model.dtype)
        return model.eval()
