"""``ImageToText``: a causal LLM that reads projected image embeddings, then a prompt, then writes the caption.

The input sequence of one image is::

    [chat prefix] [begin-of-image] [projected image tokens] [end-of-image] [prompt / chat middle] [caption] [eos]

where the begin/end-of-image markers are learned vectors. Only the caption positions (and the end token) carry
the next-token loss; everything before them is labelled ``-100``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vtok.teachers.bytes import VOCAB, ByteTokenizer
from vtok.teachers.loading import Frozen, load_transformers_model

from .projector import Projector

log = logging.getLogger(__name__)

IGNORE = -100
PLACEHOLDER = "<vtok-image>"
TRAIN_MODES = ("frozen", "full", "lora")


class ImageToText(nn.Module):
    """Projector + image markers + a causal LM and its tokenizer.

    Args:
        in_dim: size of the image token vectors the projector reads.
        source: folder or hub id of an ``AutoModelForCausalLM`` (with its tokenizer).
        gguf_file: a GGUF file name inside ``source`` (transformers dequantises it; needs ``gguf`` and
            ``accelerate``).
        config: build a random LM from a ``transformers`` config instead (toy runs, tests; said in the log); its
            tokenizer then reads UTF-8 bytes (``vocab_size`` >= 260).
        train: ``frozen`` (only projector and markers learn), ``full`` or ``lora`` (adapters through ``peft``).
        lora: ``peft.LoraConfig`` keywords (``r``, ``lora_alpha``, ``target_modules``, ``lora_dropout``).
        projector: ``Projector`` keywords (``hidden_dim``, ``depth``).
        prompt: the instruction after the image (a sample's own ``prompt`` replaces it).
        chat_template: wrap image and prompt in the LM tokenizer's chat template (an instruct model's format).
        markers: learned begin/end-of-image vectors around the image tokens.
        gradient_checkpointing: recompute the LM's activations in the backward pass (memory for time).
        max_caption_tokens: captions are cut to this many tokens.
        config_key: the key named when ``source`` cannot be loaded.
    """

    def __init__(self, in_dim: int, source: str | None = None, gguf_file: str | None = None,
                 config: dict[str, Any] | None = None, train: str = "frozen", lora: dict[str, Any] | None = None,
                 projector: dict[str, Any] | None = None, prompt: str = "Describe this image.",
                 chat_template: bool = False, markers: bool = True, gradient_checkpointing: bool = False,
                 max_caption_tokens: int = 64, config_key: str = "llm.source") -> None:
        super().__init__()
        model, self.tokenizer, _ = load_causal_lm(source, gguf_file, config, train, lora, gradient_checkpointing,
                                                  config_key)
        self.lm, self.train_mode = model, train
        self.hidden_size = int(self.language_model.config.hidden_size)
        self.projector = Projector(in_dim, self.hidden_size, **(projector or {}))
        self.markers = nn.Parameter(torch.randn(2, self.hidden_size) * 0.02) if markers else None
        self.prompt, self.chat_template, self.max_caption_tokens = prompt, chat_template, max_caption_tokens
        self.source, self.gguf_file = source, gguf_file
        self._frames: dict[str, tuple[list[int], list[int]]] = {}

    @property
    def language_model(self) -> nn.Module:
        """The causal LM itself (inside its frozen holder or LoRA wrapper)."""
        return self.lm.network if isinstance(self.lm, Frozen) else self.lm

    def llm_parameters(self) -> list[nn.Parameter]:
        """The LM's trainable parameters: none when frozen, the adapters with LoRA, all when fully trained."""
        return [p for p in self.lm.parameters() if p.requires_grad]

    def bridge_parameters(self) -> list[nn.Parameter]:
        """Projector and markers."""
        return [*self.projector.parameters(), *([self.markers] if self.markers is not None else [])]

    # --------------------------------------------------------------------------------------------- text
    def _ids(self, text: str) -> list[int]:
        return text_ids(self.tokenizer, text)

    def _frame(self, prompt: str) -> tuple[list[int], list[int]]:
        """Token ids before the image and between the image and the caption (tokenized once per prompt: every
        sample of a caption run shares one)."""
        if prompt not in self._frames:
            self._frames[prompt] = self._tokenize_frame(prompt)
        return self._frames[prompt]

    def _tokenize_frame(self, prompt: str) -> tuple[list[int], list[int]]:
        if self.chat_template and getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": f"{PLACEHOLDER}\n{prompt}"}],
                                                      tokenize=False, add_generation_prompt=True)
            before, after = text.split(PLACEHOLDER, 1)
            return self._ids(before), self._ids(after)
        bos = self.tokenizer.bos_token_id
        return ([bos] if bos is not None else []), self._ids(f"{prompt}\n" if prompt else "")

    def _embed_ids(self, ids: list[int], device: torch.device) -> Tensor:
        table = self.language_model.get_input_embeddings()
        return table(torch.tensor(ids, dtype=torch.long, device=device))

    def build_inputs(self, image: Tensor, captions: list[str] | None, prompts: list[str] | None = None,
                     lengths: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, N, in_dim)`` image tokens and captions -> ``inputs_embeds`` ``(B, T, H)``, ``attention_mask``
        ``(B, T)`` and ``labels`` ``(B, T)`` (caption tokens and the end token; ``-100`` elsewhere). Without
        captions the sequences end where the caption would start (generation). ``lengths`` ``(B,)``: image ``b``
        contributes only its first ``lengths[b]`` tokens (dynamic-length and budgeted tokenizers); each sequence
        is built whole and right-padded, so no token of one image sees another's padding."""
        projected = self.projector(image)
        rows, labels = [], []
        eos = self.tokenizer.eos_token_id
        for b in range(projected.shape[0]):
            before, after = self._frame((prompts[b] if prompts else None) or self.prompt)
            caption = []
            if captions is not None:
                caption = self._ids(captions[b])[: self.max_caption_tokens] + ([eos] if eos is not None else [])
            parts = [self._embed_ids(before, image.device)]
            if self.markers is not None:
                parts.append(self.markers[:1])
            parts.append(projected[b] if lengths is None else projected[b, : int(lengths[b])])
            if self.markers is not None:
                parts.append(self.markers[1:])
            parts += [self._embed_ids(after, image.device), self._embed_ids(caption, image.device)]
            row = torch.cat([p.to(projected.dtype) for p in parts])
            rows.append(row)
            labels.append([IGNORE] * (len(row) - len(caption)) + caption)
        length = max(len(r) for r in rows)
        embeds = projected.new_zeros(len(rows), length, self.hidden_size)
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=image.device)
        label_tensor = torch.full((len(rows), length), IGNORE, dtype=torch.long, device=image.device)
        for b, (row, label) in enumerate(zip(rows, labels)):
            embeds[b, : len(row)], mask[b, : len(row)] = row, 1
            label_tensor[b, : len(label)] = torch.tensor(label, device=image.device)
        return embeds, mask, label_tensor

    def caption_loss(self, image: Tensor, captions: list[str], prompts: list[str] | None = None,
                     lengths: Tensor | None = None) -> Tensor:
        """Mean next-token cross-entropy over the caption positions (``lengths``: as :meth:`build_inputs`)."""
        embeds, mask, labels = self.build_inputs(image, captions, prompts, lengths)
        logits = self.language_model(inputs_embeds=embeds, attention_mask=mask).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE)

    @torch.no_grad()
    def generate(self, image: Tensor, prompts: list[str] | None = None, max_new_tokens: int = 40,
                 lengths: Tensor | None = None) -> list[str]:
        """``(B, N, in_dim)`` image tokens (``lengths``: as :meth:`build_inputs`) -> one greedy caption each."""
        out = []
        for b in range(image.shape[0]):
            embeds, mask, _ = self.build_inputs(image[b: b + 1], None, prompts[b: b + 1] if prompts else None,
                                                None if lengths is None else lengths[b: b + 1])
            ids = self.language_model.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False,
                                               max_new_tokens=max_new_tokens,
                                               pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
            out.append(self.tokenizer.decode(ids[0].tolist(), skip_special_tokens=True).strip())
        return out


def load_causal_lm(source: str | None, gguf_file: str | None, config: dict[str, Any] | None, train: str,
                   lora: dict[str, Any] | None, gradient_checkpointing: bool, config_key: str
                   ) -> tuple[nn.Module, Any, nn.Module]:
    """A causal LM as a bridge holds it: ``(held, tokenizer, model)``, where ``held`` is the model in a
    :class:`Frozen` holder (``train=frozen``: never trained, never saved, reloaded from its source), with LoRA
    adapters (``lora``) or itself in training mode (``full``), and ``model`` the bare ``transformers`` model."""
    if train not in TRAIN_MODES:
        raise ValueError(f"llm train={train!r}: use one of {list(TRAIN_MODES)}")
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    model = load_transformers_model(source, config, config_key, "language model", "AutoModelForCausalLM", **extra)
    tokenizer = load_lm_tokenizer(source, gguf_file, model)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if train == "lora":
        return with_lora(model, lora or {}), tokenizer, model
    if train == "frozen":
        return Frozen(model), tokenizer, model
    return model.train(), tokenizer, model


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """``text`` as the LM tokenizer's ids, without special tokens (``[]`` for empty text)."""
    if not text:
        return []
    if isinstance(tokenizer, ByteTokenizer):
        return tokenizer.encode(text)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def load_lm_tokenizer(source: str | None, gguf_file: str | None, model: nn.Module) -> Any:
    """The LM's tokenizer from ``source`` (a model built from a config reads UTF-8 bytes)."""
    if not source:
        if model.config.vocab_size < VOCAB:
            raise ValueError(f"a language model built from a config reads UTF-8 bytes: vocab_size must be at least "
                             f"{VOCAB}, got {model.config.vocab_size}")
        return ByteTokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(source), **({"gguf_file": gguf_file} if gguf_file else {}))


def with_lora(model: nn.Module, lora: dict[str, Any]) -> nn.Module:
    """``model`` with ``peft`` LoRA adapters (``lora``: ``LoraConfig`` keywords over vtok's defaults)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise ImportError("llm.train=lora needs peft: pip install peft (or vtok[llm])") from error
    settings = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"], **lora}
    log.info("LoRA on the language model: %s", settings)
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **settings))
