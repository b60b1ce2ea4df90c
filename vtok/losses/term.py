"""What a semantic loss term provides: the features it reads, whether it needs captions, its weighted value, and
the held-out figures it reports.

A term is built from config under ``loss.terms.NAME`` and added to the reconstruction objective by
:class:`~vtok.losses.TokenizerLoss`. Before training it is *bound* once to the tokenizer's feature sizes (its
projection heads are sized then, so the optimiser sees every parameter from the start). After training, the
evaluation asks each term for a :class:`TermEvaluation` and knows no term by name: a new term adds its figures by
implementing :meth:`LossTerm.evaluation` in its own file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from vtok.tokenizers import Tokenizer, TokenizerOutput


@dataclass
class TermInputs:
    """What a term sees of one training (or evaluation) batch.

    Attributes:
        images: ``(B, 3, H, W)`` originals in ``[-1, 1]``.
        output: the tokenizer's output, with the features the terms asked for.
        text: ``(B, D)`` caption embeddings from the run's text encoder, or ``None`` without captions.
        captions: the ``B`` captions themselves (terms that read text, such as an LLM's caption loss).
        prompts: per-sample instructions (``prompt`` in the data), or ``None``.
        tokenizer: the tokenizer being trained (terms that look up its codebook).
    """

    images: Tensor
    output: TokenizerOutput
    text: Tensor | None = None
    captions: list[str] | None = None
    prompts: list[str] | None = None
    tokenizer: Tokenizer | None = None


class TermEvaluation:
    """Held-out figures of one loss term, accumulated batch by batch (every rank its share of the images).

    Attributes:
        protocol: one sentence saying how the figures are measured (recorded in the report).
    """

    protocol: str = ""

    def update(self, inputs: TermInputs) -> None:
        """Measure one held-out batch: ``inputs.output`` carries the features the term reads; ``inputs.text`` and
        ``inputs.captions`` are ``None`` when the data has no captions."""
        raise NotImplementedError

    def gather(self) -> None:
        """Join every rank's values (all ranks call this once, after their last batch)."""
        raise NotImplementedError

    def report(self) -> dict[str, Any]:
        """The figures (plain data), with ``summary``: lines for the end-of-run summary, the first one the
        headline; ``{}`` when nothing was measured."""
        raise NotImplementedError


class LossTerm(nn.Module):
    """Base class of the terms ``loss.terms`` holds.

    Attributes:
        weight: multiplies the term in the total loss.
        features: tokenizer feature names (``Tokenizer.feature_names``) the term reads from ``output.features``.
        needs_text: the term reads caption embeddings (the run needs captions and ``loss.text_encoder``).
        needs_captions: the term reads the captions themselves.
    """

    weight: float = 1.0
    features: tuple[str, ...] = ()
    needs_text: bool = False
    needs_captions: bool = False

    def checkpoint_record(self) -> dict[str, Any] | None:
        """Plain data a checkpoint keeps beside the term's weights so that tools can rebuild it without the run's
        config (an LLM bridge's settings); ``None`` for terms that only matter in training."""
        return None

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimiser groups of the term's trainable parameters (default: one group at the module's ``lr``)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": 0.0}] if params else []

    def shardable_modules(self) -> list[nn.Module]:
        """Large trainable blocks to shard over ranks under ``trainer=fsdp`` (an LLM's decoder layers); default none:
        small heads stay whole on every rank."""
        return []

    def evaluation(self) -> TermEvaluation | None:
        """A fresh accumulator of this term's held-out figures, or ``None`` for terms with nothing to report."""
        return None

    def bind(self, feature_dims: dict[str, int], text_dim: int | None) -> None:
        """Size what depends on the tokenizer: ``feature_dims`` maps each of :attr:`features` to its channels."""

    def bind_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Build what depends on the tokenizer itself (its vocabulary, its code vectors), after :meth:`bind`;
        default nothing."""

    def forward(self, inputs: TermInputs) -> tuple[Tensor, dict[str, Tensor]]:
        """``(weighted scalar loss, detached values to log)``."""
        raise NotImplementedError
