"""The allowlists a tokenizer's config is built from: ``ENCODERS``, ``DECODERS``, ``EXPANDERS`` by ``kind``, and the
tokenizer ``FAMILIES`` an exported ``config.json`` may name (filled by each family module's ``register``;
importing :mod:`vtok.tokenizers` registers them all)."""

from __future__ import annotations

from vtok.registry import Registry

ENCODERS = Registry("encoder")
DECODERS = Registry("decoder")
EXPANDERS = Registry("expander")
FAMILIES = Registry("tokenizer family")
