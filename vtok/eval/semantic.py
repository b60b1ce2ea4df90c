"""Held-out figures of a run's loss terms, whatever they are: each term's :class:`~vtok.losses.TermEvaluation`
(agreement with a teacher, image-to-caption retrieval, an LLM's caption loss, ...) fed the same batches.

The evaluation loop knows no term by name or class: a term reports by implementing ``LossTerm.evaluation``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vtok.losses import LossTerm, TermInputs
from vtok.tokenizers import Tokenizer


class TermMeter:
    """Accumulates, batch by batch, what the loss terms say about held-out images.

    Args:
        tokenizer: the model, in eval mode.
        terms: the run's loss terms (``TokenizerLoss.terms``); those with an evaluation are measured.
    """

    def __init__(self, tokenizer: Tokenizer, terms: dict[str, LossTerm]) -> None:
        self.tokenizer = tokenizer
        evaluations = {name: term.evaluation() for name, term in terms.items()}
        self.evaluations = {name: ev for name, ev in evaluations.items() if ev is not None}
        self.features = tuple(dict.fromkeys(f for name in self.evaluations for f in terms[name].features))

    @property
    def active(self) -> bool:
        return bool(self.evaluations)

    @torch.no_grad()
    def update(self, images: Tensor, text: Tensor | None, condition: Tensor | None,
               captions: list[str] | None = None) -> None:
        """``(B, 3, H, W)`` images, their captions' ``(B, D)`` embeddings (or ``None``), the tokenizer's condition,
        and the captions themselves (or ``None``)."""
        output = self.tokenizer(images, features=self.features, text=condition)
        inputs = TermInputs(images, output, text, None if captions is None else list(captions), None, self.tokenizer)
        for evaluation in self.evaluations.values():
            evaluation.update(inputs)

    def gather(self) -> None:
        """Join every rank's values (all ranks call this)."""
        for evaluation in self.evaluations.values():
            evaluation.gather()

    def report(self) -> dict[str, Any]:
        """``{"semantic": {term: figures}, "semantic_protocol": {term: protocol}}``, or ``{}`` when no term
        measured anything."""
        figures = {name: ev.report() for name, ev in self.evaluations.items()}
        figures = {name: values for name, values in figures.items() if values}
        if not figures:
            return {}
        return {"semantic": figures, "semantic_protocol": {name: self.evaluations[name].protocol for name in figures}}
