"""Held-out semantic figures of a run's loss terms: agreement with the teacher, image-to-caption retrieval.

Protocol (recorded in the report): distillation terms report the mean cosine between the tokenizer's projected
features and the teacher's, per image then over images; contrastive terms embed each held-out image and its
caption (the first, when it has several) and report recall@1 and recall@5 of finding an image's own caption
among all held-out captions, with chance (``k / N``) beside them; LLM caption terms report the mean next-token
loss of each held-out image's caption given its tokens, and the greedy captions of the first images.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vtok.distributed import gather_list
from vtok.losses import ImageTextContrastive, LossTerm, SemanticDistillation, TermInputs
from vtok.tokenizers import Tokenizer

RECALL_AT = (1, 5)
CAPTION_EXAMPLES = 3  # generated captions kept in the report


class SemanticMeter:
    """Accumulates, batch by batch, what the semantic terms say about held-out images.

    Args:
        tokenizer: the model, in eval mode.
        terms: the run's loss terms (``TokenizerLoss.terms``); distillation and contrastive ones are measured.
    """

    def __init__(self, tokenizer: Tokenizer, terms: dict[str, LossTerm]) -> None:
        self.tokenizer = tokenizer
        self.distill = {n: t for n, t in terms.items() if isinstance(t, SemanticDistillation)}
        self.contrastive = {n: t for n, t in terms.items() if isinstance(t, ImageTextContrastive)}
        self.captioning = {n: t for n, t in terms.items() if t.needs_captions}
        measured = (*self.distill.values(), *self.contrastive.values(), *self.captioning.values())
        self.features = tuple(dict.fromkeys(name for t in measured for name in t.features))
        self.cosines: dict[str, list[float]] = {name: [] for name in self.distill}
        self.caption_losses: dict[str, list[float]] = {name: [] for name in self.captioning}
        self.examples: dict[str, list[dict[str, str]]] = {name: [] for name in self.captioning}
        self.embeddings: dict[str, tuple[list[Tensor], list[Tensor]]] = {n: ([], []) for n in self.contrastive}

    @property
    def active(self) -> bool:
        return bool(self.features)

    @torch.no_grad()
    def update(self, images: Tensor, text: Tensor | None, condition: Tensor | None,
               captions: list[str] | None = None) -> None:
        """``(B, 3, H, W)`` images, their captions' ``(B, D)`` embeddings (or ``None``), the tokenizer's condition,
        and the captions themselves."""
        output = self.tokenizer(images, features=self.features, text=condition)
        features = output.features
        for name, term in self.distill.items():
            self.cosines[name] += term.cosine(images, features[term.feature]).tolist()
        if captions is not None:
            for name, term in self.captioning.items():
                inputs = TermInputs(images, output, text, list(captions), None, self.tokenizer)
                for b in range(images.shape[0]):  # per image: a mean over images, whatever the batching
                    one = TermInputs(images[b: b + 1], _row(output, b), None, [captions[b]], None, self.tokenizer)
                    self.caption_losses[name].append(float(term(one)[1]["loss"]))
                if len(self.examples[name]) < CAPTION_EXAMPLES:
                    count = CAPTION_EXAMPLES - len(self.examples[name])
                    generated = term.bridge.generate(term.image_tokens(inputs)[:count])
                    self.examples[name] += [{"reference": r, "generated": g} for r, g in zip(captions, generated)]
        if text is None:
            return
        for name, term in self.contrastive.items():
            image, caption = term.embed(features[term.feature], text)
            self.embeddings[name][0].append(image.cpu())
            self.embeddings[name][1].append(caption.cpu())

    def gather(self) -> None:
        """Join every rank's values (all ranks call this)."""
        self.cosines = {name: gather_list(values) for name, values in self.cosines.items()}
        self.caption_losses = {name: gather_list(values) for name, values in self.caption_losses.items()}
        self.embeddings = {name: (gather_list(images), gather_list(captions))
                           for name, (images, captions) in self.embeddings.items()}

    def report(self) -> dict[str, Any]:
        """``{"semantic": {term: figures}, "semantic_protocol": ...}``."""
        out: dict[str, Any] = {}
        for name, values in self.cosines.items():
            term = self.distill[name]
            out[name] = {"teacher_cosine": float(torch.tensor(values).mean()), "feature": term.feature,
                         "num_images": len(values)}
        for name, values in self.caption_losses.items():
            if values:
                out[name] = {"caption_loss": float(torch.tensor(values).mean()), "num_images": len(values),
                             "examples": self.examples[name], "feature": self.captioning[name].feature}
        for name, (images, captions) in self.embeddings.items():
            if images:
                out[name] = {**retrieval(torch.cat(images), torch.cat(captions)),
                             "feature": self.contrastive[name].feature}
        return {"semantic": out, "semantic_protocol": __doc__.split("\n\n")[1].replace("\n", " ")} if out else {}


def retrieval(images: Tensor, captions: Tensor) -> dict[str, Any]:
    """``(N, E)`` unit image and caption embeddings (row ``i`` of each belongs together) -> image-to-caption
    recall@k and chance ``k / N``."""
    similarity = images @ captions.t()
    own = similarity.diagonal().unsqueeze(1)
    rank = (similarity > own).sum(1)  # captions scored above the image's own (ties count in its favour)
    n = images.shape[0]
    out: dict[str, Any] = {"num_images": n}
    for k in RECALL_AT:
        out[f"recall_at_{k}"] = float((rank < k).float().mean())
        out[f"chance_at_{k}"] = min(1.0, k / n)
    return out


def _row(output: Any, b: int) -> Any:
    """Image ``b`` of a tokenizer output (tokens and features), as a batch of one."""
    from dataclasses import replace

    tokens = replace(output.tokens, indices=None if output.tokens.indices is None else output.tokens.indices[b: b + 1],
                     latents=output.tokens.latents[b: b + 1])
    return replace(output, reconstruction=output.reconstruction[b: b + 1], tokens=tokens,
                   features={k: v[b: b + 1] for k, v in output.features.items()})
