"""Image tokens as LLM vocabulary: the resize, the loss, learning caption -> image ids, export and generation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vtok.llm import ImageVocabulary
from vtok.llm.bridge import IGNORE

LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 260, "max_position_embeddings": 256}


def _vocabulary(codebook_size: int = 16, tied: bool = False, **kwargs) -> ImageVocabulary:
    torch.manual_seed(0)
    vocabulary = ImageVocabulary(codebook_size, config={**LLAMA, "tie_word_embeddings": tied}, **kwargs)
    vocabulary.initialise(torch.randn(codebook_size, 4))
    return vocabulary


@pytest.mark.parametrize("tied", [False, True])
def test_the_resized_model_keeps_every_text_row_and_gives_the_same_logits(tied):
    vocabulary = _vocabulary(tied=tied)
    original = vocabulary.language_model.get_input_embeddings().weight.detach().clone()
    merged = vocabulary.merged_model()
    table = merged.get_input_embeddings().weight
    assert table.shape == (260 + 2 + 16, 32) and vocabulary.vocab_size == 278
    assert torch.equal(table[:260], original)  # the LM's own rows untouched by the resize
    assert torch.equal(table[260:], vocabulary.input_rows.detach())
    assert torch.equal(vocabulary.language_model.get_input_embeddings().weight, original)  # nor in the bridge
    ids, _ = vocabulary.sequence(torch.tensor([3, 0, 15, 7]), "a cat", "text_to_image")
    ids = torch.tensor([ids])
    with torch.no_grad():
        ours = vocabulary.logits(ids, torch.ones_like(ids))
        theirs = merged(input_ids=ids).logits.float()
    assert theirs.shape[-1] == 278 and torch.allclose(ours, theirs, atol=1e-5)


def test_the_loss_over_image_ids_is_the_hand_computed_cross_entropy():
    vocabulary = _vocabulary()
    codes = torch.tensor([5, 5, 2, 9, 0, 1])
    ids, labels = vocabulary.sequence(codes, "two dogs", "text_to_image")
    assert labels[-len(codes) - 1:] == [*vocabulary.image_ids(codes).tolist(), vocabulary.end_image]
    assert all(label == IGNORE for label in labels[: -len(codes) - 1])  # the caption carries no loss this way
    ids_t = torch.tensor([ids])
    with torch.no_grad():
        logits = vocabulary.logits(ids_t, torch.ones_like(ids_t))[0].double()
        losses = vocabulary.loss([codes], ["two dogs"], ["text_to_image"])
    start = len(ids) - len(codes) - 1  # the first code is predicted from the begin-of-image position
    by_hand = [-F.log_softmax(logits[start - 1 + i], -1)[ids[start + i]] for i in range(len(codes) + 1)]
    assert float(losses["text_to_image"]) == pytest.approx(float(torch.stack(by_hand).mean()), rel=1e-5)
    assert float(losses["image_codes"]) == pytest.approx(float(torch.stack(by_hand[:-1]).mean()), rel=1e-5)
    first_code = vocabulary.text_vocab + 2  # among the codes alone: the softmax over the code ids only
    among = [-F.log_softmax(logits[start - 1 + i, first_code:], -1)[int(c)] for i, c in enumerate(codes)]
    assert float(losses["image_codes_among_codes"]) == pytest.approx(float(torch.stack(among).mean()), rel=1e-5)


def test_new_rows_start_near_the_mean_row_keeping_the_codes_geometry():
    torch.manual_seed(0)
    vocabulary = ImageVocabulary(3, config=LLAMA)
    vectors = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0]])  # codes 0 and 1 close, 2 far
    vocabulary.initialise(vectors, scale=0.1)
    table = vocabulary.language_model.get_input_embeddings().weight.detach()
    offsets = vocabulary.input_rows.detach() - table.mean(0)
    assert torch.allclose(offsets.norm(dim=-1), torch.full((5,), 0.1 * float(table.norm(dim=-1).mean())))
    cosine = F.normalize(offsets[2:], dim=-1) @ F.normalize(offsets[2:], dim=-1).T
    assert cosine[0, 1] > 0.9 and cosine[0, 2] < -0.9


def test_one_images_padding_does_not_change_anothers_loss():
    vocabulary = _vocabulary()
    short, long = torch.tensor([1, 2]), torch.tensor([3, 4, 5, 6, 7, 8, 9])
    with torch.no_grad():
        alone = vocabulary.loss([short], ["a"], ["image_to_text"])["loss"]
        ids, mask, labels = vocabulary.batch([vocabulary.sequence(short, "a", "image_to_text"),
                                              vocabulary.sequence(long, "a much longer caption", "image_to_text")],
                                             torch.device("cpu"))
        logits = vocabulary.logits(ids, mask)
        row = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=IGNORE)
    assert float(row) == pytest.approx(float(alone), rel=1e-5)


def test_the_llm_learns_to_write_a_captions_image_ids_below_the_unigram_baseline():
    """Four captions, each with its own 8 ids: caption -> image-id loss falls from chance to below the unigram
    entropy of the ids (which an LLM that ignored the caption could not beat)."""
    vocabulary = _vocabulary(codebook_size=32, train="full")
    generator = torch.Generator().manual_seed(1)
    images = {caption: torch.randint(32, (8,), generator=generator)
              for caption in ("a red circle", "two blue squares", "green grass", "one yellow star")}
    counts = torch.bincount(torch.cat(list(images.values())), minlength=32).double()
    p = counts[counts > 0] / counts.sum()
    unigram = float(-(p * p.log()).sum())
    optimizer = torch.optim.AdamW([{"params": vocabulary.new_parameters(), "lr": 3e-3},
                                   {"params": vocabulary.llm_parameters(), "lr": 3e-3}], weight_decay=0.0)
    captions, codes = list(images), list(images.values())

    def held_out() -> float:
        with torch.no_grad():
            return float(vocabulary.loss(codes, captions, ["text_to_image"] * 4)["image_codes"])

    start = held_out()
    assert start > 0.8 * math.log(32)
    for step in range(100):  # both directions for every image, in turn
        loss = vocabulary.loss(codes, captions, [("text_to_image", "image_to_text")[step % 2]] * 4)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert held_out() < 0.5 * unigram, (start, held_out(), unigram)
    drawn = vocabulary.generate_codes("green grass", 8, temperature=0.01, seed=0)
    assert torch.equal(drawn, images["green grass"])


def test_a_frozen_llm_trains_only_the_new_rows(compose_run):
    from vtok.experiment import run as train

    cfg = compose_run("experiment=llm_vocabulary", "data=synthetic", "trainer.max_steps=2", "evaluate=true",
                      "eval.split=val")
    result = train(cfg)
    report = result["report"]["semantic"]["vocabulary"]
    assert report["num_images"] > 0 and report["unigram_baseline"] > 0
    assert report["text_to_image_loss"] > 0 and report["image_to_text_loss"] > 0
    # the codes of both training steps were counted; no unigram model beats the held-out codes' own entropy
    assert report["training_codes_counted"] == 2 * cfg.data.batch_size * result["report"]["tokens_per_image"]
    assert report["unigram_fitted_on_training"] > report["unigram_baseline"]
    assert report["text_to_image_among_codes"] <= report["text_to_image_loss"] + 1e-6
    assert report["text_to_image_other_caption"] > 0  # the codes scored after another image's caption


def test_export_and_generate_from_the_exported_folder(compose_run, tmp_path):
    from vtok.experiment import run as train
    from vtok.hub import main as export_main
    from vtok.llm.generate import load
    from vtok.llm.generate import main as generate_main

    result = train(compose_run("experiment=llm_vocabulary", "data=synthetic", "trainer.max_steps=2"))
    assert export_main([f"ckpt={result['checkpoint']}", f"out={tmp_path / 'exported'}"]) == 0
    _, from_ckpt = load(result["checkpoint"])
    tokenizer, from_folder = load(str(tmp_path / "exported"))
    assert torch.equal(from_ckpt.input_rows, from_folder.input_rows)
    out = tmp_path / "drawn.png"
    assert generate_main([f"ckpt={tmp_path / 'exported'}", "prompt=a red square", "samples=2", f"out={out}"]) == 0
    from PIL import Image

    size = tokenizer.fixed_size or tokenizer.image_size
    assert Image.open(out).size == (2 * size, size)
