"""Tokenizer families built for LLMs: SEED's causal tokens (and the attention masks they need)."""

from __future__ import annotations

import torch

from vtok.modules.transformer import Transformer, causal_query_mask
from vtok.tokenizers.latent_tokens import LatentTokenEncoder


def test_the_causal_query_mask_reads_context_and_earlier_queries_only():
    mask = causal_query_mask(3, 4)
    assert mask.shape == (7, 7)
    assert mask[:3, :3].all() and not mask[:3, 3:].any()  # the context never reads the queries
    assert mask[3:, :3].all() and torch.equal(mask[3:, 3:], torch.ones(4, 4, dtype=torch.bool).tril())
    torch.manual_seed(0)
    x = torch.randn(2, 7, 16)
    transformer = Transformer(16, 2, 2)
    masked = transformer(x, mask=mask)
    changed = x.clone()
    changed[:, 5] += 1.0  # a later query
    after = transformer(changed, mask=mask)
    assert torch.allclose(masked[:, :5], after[:, :5], atol=1e-6) and not torch.allclose(masked[:, 5:], after[:, 5:])


def test_seed_tokens_depend_on_the_image_and_earlier_tokens_only():
    torch.manual_seed(0)
    encoder = LatentTokenEncoder(num_tokens=8, patch_size=8, width=32, depth=2, heads=2, out_dim=4, image_size=32,
                                 causal=True).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = encoder(images)
        encoder.latents[5] += 1.0  # what token 5 starts from: tokens 0-4 never read it
        after = encoder(images)
        assert torch.equal(before[:, :5], after[:, :5]) and not torch.allclose(before[:, 5:], after[:, 5:])
        other = encoder(images.flip(-1))  # every token reads the whole image
        assert not torch.allclose(other[:, 0], after[:, 0])
    bidirectional = LatentTokenEncoder(num_tokens=8, patch_size=8, width=32, depth=2, heads=2, out_dim=4,
                                       image_size=32).eval()
    with torch.no_grad():  # without the mask (TiTok) every token reads every other: the same change reaches token 0
        first = bidirectional(images)
        bidirectional.latents[5] += 1.0
        assert not torch.allclose(first[:, :5], bidirectional(images)[:, :5])
