"""What a semantic loss term provides: the features it reads, whether it needs captions, its weighted value.

A term is built from config under ``loss.terms.NAME`` and added to the reconstruction objective by
:class:`~vtok.losses.TokenizerLoss`. Before training it is *bound* once to the tokenizer's feature sizes (its
projection heads are sized then, so the optimiser sees every parameter from the start).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from vtok.tokenizers import TokenizerOutput


@dataclass
class TermInputs:
    """What a term sees of one training (or evaluation) batch.

    Attributes:
        images: ``(B, 3, H, W)`` originals in ``[-1, 1]``.
        output: the tokenizer's output, with the features the terms asked for.
        text: ``(B, D)`` caption embeddings from the run's text encoder, or ``None`` without captions.
    """

    images: Tensor
    output: TokenizerOutput
    text: Tensor | None = None


class LossTerm(nn.Module):
    """Base class of the terms ``loss.terms`` holds.

    Attributes:
        weight: multiplies the term in the total loss.
        features: tokenizer feature names (``Tokenizer.feature_names``) the term reads from ``output.features``.
        needs_text: the term reads caption embeddings (the run needs captions and ``loss.text_encoder``).
    """

    weight: float = 1.0
    features: tuple[str, ...] = ()
    needs_text: bool = False

    def bind(self, feature_dims: dict[str, int], text_dim: int | None) -> None:
        """Size what depends on the tokenizer: ``feature_dims`` maps each of :attr:`features` to its channels."""

    def forward(self, inputs: TermInputs) -> tuple[Tensor, dict[str, Tensor]]:
        """``(weighted scalar loss, detached values to log)``."""
        raise NotImplementedError
