"""A tokenizer that needs no vocabulary file: UTF-8 bytes as ids, for models built from a config (toy runs)."""

from __future__ import annotations

PAD, BOS, EOS, UNKNOWN = 256, 257, 258, 259
VOCAB = 260  # the smallest vocabulary a model reading these ids needs


class ByteTokenizer:
    """``str`` <-> byte ids; ``pad_token_id``, ``bos_token_id`` and ``eos_token_id`` as ``transformers``
    tokenizers name them."""

    pad_token_id, bos_token_id, eos_token_id = PAD, BOS, EOS
    chat_template = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [BOS, *ids] if add_special_tokens else ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        data = bytes(i for i in ids if i < 256)
        return data.decode("utf-8", errors="replace")
