"""The ETT caption loss: a loss term that feeds the tokenizer's code embeddings to an LLM and asks it to caption."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from vtok.distributed import gather_list
from vtok.losses.term import LossTerm, TermEvaluation, TermInputs
from vtok.tokenizers.tokenizer import plain_data

from .bridge import ImageToText

CAPTION_EXAMPLES = 3  # generated captions kept in the report


class CaptionLoss(LossTerm):
    """Next-token loss of the image's caption given its tokens, through :class:`ImageToText`.

    For discrete tokenizers the LLM reads ``tokenizer.embed(indices)`` (the codebook vectors: gradient reaches
    the codebook) plus the straight-through difference of the quantized features (gradient reaches the encoder);
    its value is exactly the code vector. Continuous tokenizers pass their latents as they are.

    Args:
        llm: :class:`ImageToText` keywords (``source``, ``gguf_file``, ``config``, ``train``, ``lora``, ...).
        feature: what the LLM reads: ``quantized``, or ``quantized.semantic`` / ``quantized.pixel`` for dual
            codebooks (which codebook's embeddings).
        weight: weight of the caption loss.
        lr: learning rate of the projector and markers (``None``: the module's ``lr``).
        llm_lr: learning rate of the LLM's trainable weights (full or LoRA).
        budgets: token counts to draw from, one per image per training step (TokenFLEX: one LLM for any visual
            token budget); the LLM then reads that prefix of the image's tokens. Needs a flexible 1D tokenizer.
            ``None``: every token (or each image's own length, for dynamic-length tokenizers).
    """

    needs_captions = True

    def __init__(self, llm: dict[str, Any], feature: str = "quantized", weight: float = 1.0,
                 lr: float | None = None, llm_lr: float = 1.0e-5, budgets: list[int] | None = None) -> None:
        super().__init__()
        self.llm_config = dict(llm)
        self.feature, self.features = feature, (feature,)
        self.which = feature.split(".", 1)[1] if "." in feature else None
        self.weight, self.lr, self.llm_lr = weight, lr, llm_lr
        self.budgets = sorted(int(b) for b in budgets) if budgets else None
        if self.budgets and self.budgets[0] < 1:
            raise ValueError(f"loss.terms.caption.budgets={budgets}: token counts of at least 1")
        self.bridge: ImageToText | None = None

    def bind(self, feature_dims: dict[str, int], text_dim: int | None) -> None:
        if self.bridge is None:
            self.bridge = ImageToText(feature_dims[self.feature], **self.llm_config)

    def bind_tokenizer(self, tokenizer: Any) -> None:
        if self.budgets and not tokenizer.flexible:
            raise ValueError("loss.terms.caption.budgets needs a flexible 1D tokenizer (nested dropout), whose every "
                             "prefix decodes: this one reads whole token grids")

    def lengths(self, inputs: TermInputs, count: int) -> Tensor | None:
        """``(B,)`` tokens the LLM reads of each image: the tokenizer's own lengths, cut to a budget drawn per image
        while training (``budgets``); ``None``: all ``count`` of every image."""
        lengths = inputs.output.tokens.lengths
        if not (self.budgets and self.training):
            return lengths
        device = inputs.images.device
        drawn = torch.tensor(self.budgets, device=device)[torch.randint(len(self.budgets), (len(inputs.images),))
                                                          .to(device)].clamp(max=count)
        return drawn if lengths is None else torch.minimum(drawn, lengths.to(device))

    def checkpoint_record(self) -> dict[str, Any]:
        """``{"kind": "llm_caption", "feature", "in_dim", "llm": settings}``: what export and captioning rebuild."""
        bridge = self._bridge()
        return {"kind": "llm_caption", "feature": self.feature, "in_dim": bridge.projector.in_dim,
                "llm": {k: v for k, v in plain_data(self.llm_config).items() if k != "config_key"}}

    def shardable_modules(self) -> list[nn.Module]:
        """The trained LLM's decoder layers (the classes it names in ``_no_split_modules``); none when frozen."""
        bridge = self._bridge()
        if not bridge.llm_parameters():
            return []
        language_model = bridge.language_model
        names = set(getattr(language_model, "_no_split_modules", None) or [])
        # by class name along the MRO: once sharded, FSDP2 gives each layer a subclass of its own
        return [m for m in language_model.modules() if any(c.__name__ in names for c in type(m).__mro__)]

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        bridge = self._bridge()
        groups = [{"params": bridge.bridge_parameters(), "lr": self.lr or lr, "weight_decay": 0.0}]
        if bridge.llm_parameters():
            groups.append({"params": bridge.llm_parameters(), "lr": self.llm_lr, "weight_decay": 0.0})
        return groups

    def _bridge(self) -> ImageToText:
        if self.bridge is None:
            raise RuntimeError("bind() the caption loss to the tokenizer's feature sizes before use")
        return self.bridge

    def image_tokens(self, inputs: TermInputs) -> Tensor:
        """``(B, N, D)``: what the LLM reads of each image (code embeddings with the encoder's gradient)."""
        quantized = inputs.output.features[self.feature]
        indices = inputs.output.tokens.indices
        if indices is not None and inputs.tokenizer is not None:
            codes = inputs.tokenizer.embed(indices, self.which).to(quantized.dtype)
            quantized = codes + (quantized - quantized.detach())
        return quantized.flatten(1, -2)

    def evaluation(self) -> CaptionEvaluation:
        return CaptionEvaluation(self)

    def forward(self, inputs: TermInputs) -> tuple[Tensor, dict[str, Tensor]]:
        if inputs.captions is None:
            raise ValueError("the caption loss got a batch without captions")
        tokens = self.image_tokens(inputs)
        loss = self._bridge().caption_loss(tokens, list(inputs.captions), inputs.prompts,
                                           self.lengths(inputs, tokens.shape[1]))
        return self.weight * loss, {"loss": loss.detach(), "perplexity": torch.exp(loss.detach().clamp(max=20))}


class CaptionEvaluation(TermEvaluation):
    """The LLM's held-out caption loss, and what it says about the first images (needs captions)."""

    protocol = ("mean next-token loss of each held-out image's caption (the first, when it has several) given the "
                f"image's tokens, per image then over images; greedy captions of the first {CAPTION_EXAMPLES} images")

    def __init__(self, term: CaptionLoss) -> None:
        self.term = term
        self.losses: list[float] = []
        self.examples: list[dict[str, str]] = []

    @torch.no_grad()
    def update(self, inputs: TermInputs) -> None:
        if inputs.captions is None:
            return
        for b in range(inputs.images.shape[0]):  # per image: a mean over images, whatever the batching
            one = TermInputs(inputs.images[b: b + 1], _row(inputs.output, b), None, [inputs.captions[b]], None,
                             inputs.tokenizer)
            self.losses.append(float(self.term(one)[1]["loss"]))
        if len(self.examples) < CAPTION_EXAMPLES:
            count = CAPTION_EXAMPLES - len(self.examples)
            lengths = inputs.output.tokens.lengths
            generated = self.term.bridge.generate(self.term.image_tokens(inputs)[:count],
                                                  lengths=None if lengths is None else lengths[:count])
            self.examples += [{"reference": r, "generated": g} for r, g in zip(inputs.captions, generated)]

    def gather(self) -> None:
        self.losses = gather_list(self.losses)

    def report(self) -> dict[str, Any]:
        if not self.losses:
            return {}
        loss = float(torch.tensor(self.losses).mean())
        summary = [f"held-out caption loss {loss:.3f} over {len(self.losses)} images"]
        summary += [f"{e['generated']!r} (reference: {e['reference']!r})" for e in self.examples]
        return {"caption_loss": loss, "num_images": len(self.losses), "examples": self.examples,
                "feature": self.term.feature, "summary": summary}


def _row(output: Any, b: int) -> Any:
    """Image ``b`` of a tokenizer output (tokens and features), as a batch of one."""
    tokens = replace(output.tokens, indices=None if output.tokens.indices is None else output.tokens.indices[b: b + 1],
                     latents=output.tokens.latents[b: b + 1],
                     lengths=None if output.tokens.lengths is None else output.tokens.lengths[b: b + 1])
    return replace(output, reconstruction=output.reconstruction[b: b + 1], tokens=tokens,
                   features={k: v[b: b + 1] for k, v in output.features.items()})
