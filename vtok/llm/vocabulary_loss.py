"""The "see and draw" loss: an LLM whose vocabulary holds the tokenizer's codes learns image -> caption and
caption -> image tokens (:class:`~vtok.llm.vocabulary.ImageVocabulary`)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import torch
from torch import Tensor

from vtok.distributed import all_reduce_sum, gather_list
from vtok.losses.term import LossTerm, TermEvaluation, TermInputs
from vtok.tokenizers import Tokenizer
from vtok.tokenizers.tokenizer import plain_data
from vtok.tokenizers.tokens import token_sequences

from .vocabulary import DIRECTIONS, ImageVocabulary


class VocabularyLoss(LossTerm):
    """Next-token loss of interleaved image-id / caption sequences through an LLM with the codebook as vocabulary.

    The ids are the tokenizer's (discrete: nothing flows back into the tokenizer; freeze it, as SEED-LLaMA and
    LaVIT train their LLM on a fixed tokenizer). Each image goes image -> text or text -> image at random, with
    ``llm.text_to_image`` the share of the second.

    Args:
        llm: :class:`ImageVocabulary` keywords (``source``, ``gguf_file``, ``config``, ``train``, ``lora``,
            ``caption_prompt``, ``image_prompt``, ``text_to_image``, ``max_caption_tokens``).
        weight: weight of the loss.
        lr: learning rate of the new rows (``None``: the module's ``lr``).
        llm_lr: learning rate of the LLM's own weights (``train=full`` or ``lora``).
        seed: seed of the new rows' initial projection.
        init_scale: the new rows start at the LM's mean row plus an offset this share of its row norm long
            (:meth:`ImageVocabulary.initialise`).
    """

    needs_captions = True

    def __init__(self, llm: dict[str, Any], weight: float = 1.0, lr: float | None = None, llm_lr: float = 1.0e-5,
                 seed: int = 0, init_scale: float = 0.1) -> None:
        super().__init__()
        self.llm_config = dict(llm)
        self.weight, self.lr, self.llm_lr, self.seed, self.init_scale = weight, lr, llm_lr, seed, init_scale
        self.vocabulary: ImageVocabulary | None = None

    def bind_tokenizer(self, tokenizer: Tokenizer) -> None:
        if self.vocabulary is not None:
            return
        if tokenizer.vocab_size is None:
            raise ValueError("the LLM vocabulary term needs a discrete tokenizer: this one is continuous")
        self.vocabulary = ImageVocabulary(int(tokenizer.vocab_size), **self.llm_config)
        self.vocabulary.to(next(tokenizer.parameters()).device)
        self.vocabulary.initialise(code_vectors(tokenizer), self.seed, self.init_scale)
        # how often training saw each code: the caption-blind unigram model evaluation compares against
        self.register_buffer("code_counts", torch.zeros(self.vocabulary.codebook_size, dtype=torch.float64,
                                                        device=self.vocabulary.input_rows.device))

    def _vocabulary(self) -> ImageVocabulary:
        if self.vocabulary is None:
            raise RuntimeError("bind the vocabulary term to the tokenizer (bind_tokenizer) before use")
        return self.vocabulary

    def checkpoint_record(self) -> dict[str, Any]:
        """``{"kind": "llm_vocabulary", "codebook_size", "llm": settings}``: what export and generation rebuild."""
        vocabulary = self._vocabulary()
        return {"kind": "llm_vocabulary", "codebook_size": vocabulary.codebook_size,
                "llm": {k: v for k, v in plain_data(self.llm_config).items() if k != "config_key"}}

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        vocabulary = self._vocabulary()
        groups = [{"params": vocabulary.new_parameters(), "lr": self.lr or lr, "weight_decay": 0.0}]
        if vocabulary.llm_parameters():
            groups.append({"params": vocabulary.llm_parameters(), "lr": self.llm_lr, "weight_decay": 0.0})
        return groups

    def directions(self, count: int) -> list[str]:
        """A direction per image, text -> image with probability ``text_to_image`` (the global RNG: seeded runs
        repeat)."""
        share = self._vocabulary().text_to_image
        return [DIRECTIONS[1] if float(u) < share else DIRECTIONS[0] for u in torch.rand(count)]

    def forward(self, inputs: TermInputs) -> tuple[Tensor, dict[str, Tensor]]:
        if inputs.captions is None:
            raise ValueError("the LLM vocabulary term got a batch without captions")
        codes = token_sequences(inputs.output.tokens)
        if self.training:
            self.code_counts += torch.bincount(torch.cat(codes).long(), minlength=len(self.code_counts))
        losses = self._vocabulary().loss(codes, list(inputs.captions), self.directions(len(codes)))
        return self.weight * losses["loss"], {k: v.detach() for k, v in losses.items()}

    def evaluation(self) -> VocabularyEvaluation:
        return VocabularyEvaluation(self)


def code_vectors(tokenizer: Tokenizer) -> Tensor | None:
    """The ``(K, D)`` code vectors of a tokenizer with one id per position (``None`` for layouts whose ids are
    not one code each, such as residual depths: the new rows then start random)."""
    ids = torch.arange(int(tokenizer.vocab_size), device=next(tokenizer.parameters()).device)[None]
    try:
        with torch.no_grad():
            vectors = tokenizer.embed(ids)
    except (RuntimeError, ValueError, IndexError):
        return None
    return vectors[0] if vectors.ndim == 3 and vectors.shape[1] == ids.shape[1] else None


class VocabularyEvaluation(TermEvaluation):
    """Held-out loss in each direction, with the caption -> image-token loss beside two unigram baselines: the
    entropy of the held-out codes' own frequencies (a lower bound for any order-free guess) and a unigram model
    of the codes training saw."""

    protocol = ("mean next-token loss per held-out image in each direction (image -> caption over caption tokens; "
                "caption -> image over the code ids, with the softmax over the whole vocabulary and over the code "
                "ids only, as generation samples), the first caption of each image; the unigram baseline is the "
                "entropy (nats) of the held-out code frequencies (the best any caption-blind, order-blind guess "
                "can do), beside the cross-entropy of a unigram model fit on the codes training saw (add-one); "
                "the caption -> image loss is repeated with the previous held-out image's caption (what the "
                "caption itself is worth)")

    def __init__(self, term: VocabularyLoss) -> None:
        self.term = term
        self.losses: dict[str, list[float]] = {d: [] for d in (*DIRECTIONS, "among_codes", "other_caption")}
        self.previous_caption: str | None = None
        self.counts: Counter[int] = Counter()
        self.images = 0
        self.trained_counts: Tensor | None = None

    @torch.no_grad()
    def update(self, inputs: TermInputs) -> None:
        if inputs.captions is None:
            return
        vocabulary = self.term._vocabulary()
        for codes, caption in zip(token_sequences(inputs.output.tokens), inputs.captions):
            for direction in DIRECTIONS:
                losses = vocabulary.loss([codes], [caption], [direction])
                self.losses[direction].append(float(losses["image_codes" if direction == "text_to_image" else "loss"]))
                if direction == "text_to_image":
                    self.losses["among_codes"].append(float(losses["image_codes_among_codes"]))
            if self.previous_caption is not None:  # the same codes after another image's caption
                other = vocabulary.loss([codes], [self.previous_caption], ["text_to_image"])
                self.losses["other_caption"].append(float(other["image_codes"]))
            self.previous_caption = caption
            self.counts.update(codes.tolist())
            self.images += 1

    def gather(self) -> None:
        self.trained_counts = all_reduce_sum(self.term.code_counts.clone())
        self.losses = {d: gather_list(v) for d, v in self.losses.items()}
        merged: Counter[int] = Counter()
        for part in gather_list([dict(self.counts)]):
            merged.update(part)
        self.counts, self.images = merged, sum(gather_list([self.images]))

    def report(self) -> dict[str, Any]:
        if not self.images:
            return {}
        total = sum(self.counts.values())
        unigram = -sum(c / total * math.log(c / total) for c in self.counts.values())
        losses = {d: sum(v) / len(v) for d, v in self.losses.items() if v}
        trained = (self.trained_counts if self.trained_counts is not None else self.term.code_counts).double()
        # the unigram model of the training codes (add-one smoothed) on the held-out codes
        fitted = ((trained + 1) / (trained.sum() + len(trained))).log().tolist()
        unigram_fitted = -sum(c * fitted[k] for k, c in self.counts.items()) / total
        summary = [f"caption -> image tokens {losses['text_to_image']:.3f} nats per token over the whole vocabulary, "
                   f"{losses['among_codes']:.3f} among the codes (unigram baseline {unigram:.3f}, uniform "
                   f"{math.log(self.term._vocabulary().codebook_size):.3f}, a unigram fit on the training codes "
                   f"{unigram_fitted:.3f}); image -> caption "
                   f"{losses['image_to_text']:.3f}, over {self.images} held-out images"]
        if self.losses["other_caption"]:
            summary.append(f"caption -> image tokens after the previous image's caption: "
                           f"{losses['other_caption']:.3f} (what the caption itself tells)")
        return {"text_to_image_loss": losses["text_to_image"], "text_to_image_among_codes": losses["among_codes"],
                "text_to_image_other_caption": losses.get("other_caption"),
                "image_to_text_loss": losses["image_to_text"], "unigram_baseline": unigram,
                "unigram_fitted_on_training": unigram_fitted, "training_codes_counted": int(trained.sum()),
                "num_images": self.images, "summary": summary}
