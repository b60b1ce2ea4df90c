"""End-to-end tuning against an LLM (ETT): the caption loss, what each stage trains, export and captioning."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from vtok import Tokenizer
from vtok.checkpoint import read_checkpoint
from vtok.llm import CaptionLoss, ImageToText
from vtok.llm.bridge import IGNORE
from vtok.llm.export import bridge_from_checkpoint, load_bridge
from vtok.losses import TokenizerLoss
from vtok.training import TokenizerModule
from vtok.weights import MissingWeightsError

from .conftest import ROOT, tiny_tokenizer_config

CAPTIONS = ["a red circle on a blue background", "a green square", "a white stripe on a black background"]


@pytest.fixture(scope="module")
def llm_folder(tmp_path_factory):
    """A 2-layer Llama with a byte-level BPE tokenizer, saved with save_pretrained and loaded back by path."""
    from tokenizers import Tokenizer as FastTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("llm")
    bpe = FastTokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CAPTIONS * 20 + ["Describe this image."], trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(
        folder)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=bpe.get_vocab_size(), max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _tokenizer() -> Tokenizer:
    # gradient-trained codebook, no data initialisation: nothing but gradients moves it
    return Tokenizer(**tiny_tokenizer_config(codebook_size=32, data_init=False))


def _module(llm_folder, train="frozen", freeze_tokenizer=False, recon=0.0):
    term = CaptionLoss({"source": str(llm_folder), "train": train}, lr=1e-2, llm_lr=1e-2)
    loss = TokenizerLoss(l1_weight=0.0, l2_weight=recon, quantizer_weight=recon, terms={"caption": term})
    return TokenizerModule(_tokenizer(), loss, lr=1e-2, warmup_steps=0, total_steps=10, ema_decay=None,
                           freeze_tokenizer=freeze_tokenizer)


def _batch():
    torch.manual_seed(1)
    return {"image": torch.rand(3, 3, 32, 32) * 2 - 1, "caption": CAPTIONS}


def _train(module, steps=1):
    import lightning as L
    from torch.utils.data import DataLoader

    loader = DataLoader([_batch()] * steps, batch_size=None)  # the same batch each step
    L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(module, loader)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_caption_positions_alone_carry_the_loss(llm_folder):
    bridge = ImageToText(8, source=str(llm_folder))
    image = torch.randn(2, 5, 8)
    embeds, mask, labels = bridge.build_inputs(image, CAPTIONS[:2])
    for b, caption in enumerate(CAPTIONS[:2]):
        caption_ids = bridge.tokenizer(caption, add_special_tokens=False)["input_ids"] + [bridge.tokenizer.eos_token_id]
        labelled = labels[b][labels[b] != IGNORE].tolist()
        assert labelled == caption_ids  # the caption and its end token, nothing else
        assert int(mask[b].sum()) == len(bridge.tokenizer("Describe this image.\n", add_special_tokens=False)
                                         ["input_ids"]) + 1 + 2 + 5 + len(caption_ids)  # bos, markers, image
    # by hand: cross-entropy of each caption token given everything before it
    logits = bridge.language_model(inputs_embeds=embeds, attention_mask=mask).logits
    by_hand = []
    for b in range(2):
        for t in range(1, labels.shape[1]):
            if labels[b, t] != IGNORE:
                by_hand.append(F.cross_entropy(logits[b, t - 1][None], labels[b, t][None]))
    assert torch.allclose(bridge.caption_loss(image, CAPTIONS[:2]), torch.stack(by_hand).mean(), atol=1e-6)
    # the image tokens matter: other tokens, another loss
    assert not torch.allclose(bridge.caption_loss(image, CAPTIONS[:2]), bridge.caption_loss(image * 3, CAPTIONS[:2]))


def test_e2e_step_with_no_reconstruction_moves_codebook_and_encoder_through_the_embeddings(llm_folder):
    module = _module(llm_folder, train="full", recon=0.0)
    before = _snapshot(module)
    _train(module)
    after = module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "tokenizer.quantizer.codebook" in changed  # the LLM read the codebook vectors
    assert any(k.startswith("tokenizer.encoder.") for k in changed)  # straight through to the encoder
    assert not any(k.startswith("tokenizer.decoder.") for k in changed)  # no reconstruction loss: no gradient
    assert any(k.startswith("loss.terms.caption.bridge.projector.") for k in changed)
    assert any(k.startswith("loss.terms.caption.bridge.lm.") for k in changed)  # the LLM trains fully


def test_align_stage_changes_only_the_projector(llm_folder):
    module = _module(llm_folder, train="frozen", freeze_tokenizer=True)
    llm = {k: v.clone() for k, v in module.loss.terms["caption"].bridge.language_model.state_dict().items()}
    before = _snapshot(module)
    _train(module, steps=3)
    after = module.state_dict()
    for key, value in before.items():
        if key.startswith("tokenizer."):
            assert torch.equal(value, after[key]), key  # bitwise: weights and buffers alike
    assert not any(k.startswith("loss.terms.caption.bridge.lm") for k in after)  # a frozen LLM is not saved
    assert all(torch.equal(v, module.loss.terms["caption"].bridge.language_model.state_dict()[k])
               for k, v in llm.items())
    assert not torch.equal(before["loss.terms.caption.bridge.projector.layers.0.weight"],
                           after["loss.terms.caption.bridge.projector.layers.0.weight"])


def test_lora_trains_adapters_and_leaves_the_base_weights(llm_folder):
    pytest.importorskip("peft", reason="pip install peft (vtok[llm])")
    module = _module(llm_folder, train="lora", freeze_tokenizer=True)
    bridge = module.loss.terms["caption"].bridge
    trainable = {n for n, p in bridge.lm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    base = {n: p.detach().clone() for n, p in bridge.lm.named_parameters() if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in bridge.lm.named_parameters() if p.requires_grad}
    _train(module, steps=2)
    now = dict(bridge.lm.named_parameters())
    assert all(torch.equal(v, now[n]) for n, v in base.items())
    assert any(not torch.equal(v, now[n]) for n, v in adapters.items())


def test_a_missing_llm_stops_with_the_key(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"llm\.source=/path/to/folder"):
        ImageToText(8, source=str(tmp_path / "no-llm"))


def test_stage_runs_export_and_caption_from_the_command_line(llm_folder, tmp_path):
    out = tmp_path / "outputs"
    run = [sys.executable, "train.py", "experiment=ett_e2e", "scale=toy", "data=synthetic",
           f"llm.source={llm_folder}", "llm.config=null", f"paths.root_dir={tmp_path}", "trainer.max_steps=2"]
    result = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = out / "ett_e2e" / "checkpoints" / "last.ckpt"
    exported = tmp_path / "exported"
    result = subprocess.run([sys.executable, "-m", "vtok.hub", f"ckpt={ckpt}", f"out={exported}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # the tuned tokenizer loads alone, bit for bit; the bridge loads back and gives the same caption loss
    record, state = bridge_from_checkpoint(read_checkpoint(ckpt))
    from vtok.llm.export import build_bridge

    from_ckpt = build_bridge(record, state)
    loaded, _ = load_bridge(exported)
    image = torch.randn(2, 16, record["in_dim"])
    assert torch.equal(from_ckpt.caption_loss(image, CAPTIONS[:2]), loaded.caption_loss(image, CAPTIONS[:2]))
    tokenizer = Tokenizer.from_pretrained(str(exported))
    from vtok.checkpoint import load_tokenizer

    ema = load_tokenizer(ckpt, weights="ema")[0]
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(tokenizer.decode(tokenizer.encode(images)), ema.decode(ema.encode(images)))
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "red.png")
    for source in (ckpt, exported):
        result = subprocess.run([sys.executable, "-m", "vtok.llm.caption", f"ckpt={source}",
                                 f"images=[{tmp_path / 'red.png'}]", "max_new_tokens=5"], cwd=ROOT, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0 and f"{tmp_path / 'red.png'}: " in result.stdout, result.stderr[-2000:]


def test_instruction_shards_give_prompt_and_answer(tmp_path):
    import io
    import json

    import webdataset as wds
    from PIL import Image

    from vtok.data import ImageTransform, ShardDataset

    png = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 10)).save(png, format="PNG")
    with wds.TarWriter(str(tmp_path / "sft-000000.tar")) as sink:
        sink.write({"__key__": "a", "png": png.getvalue(),
                    "json": json.dumps({"prompt": "What colour is it?", "answer": "Green."}).encode()})
    sample = next(iter(ShardDataset(str(tmp_path / "sft-000000.tar"), ImageTransform(size=16, mode="center"),
                                    resampled=False, shuffle_buffer=0, captions=True)))
    assert sample["prompt"] == "What colour is it?" and sample["caption"] == "Green."


def test_images_of_different_lengths_share_a_batch_without_seeing_each_others_padding(llm_folder):
    bridge = ImageToText(8, source=str(llm_folder))
    torch.manual_seed(0)
    image = torch.randn(2, 6, 8)
    lengths = torch.tensor([2, 6])
    alone = bridge.caption_loss(image[:1, :2], CAPTIONS[:1])
    embeds, mask, labels = bridge.build_inputs(image, [CAPTIONS[0], CAPTIONS[2]], lengths=lengths)
    assert int(mask[0].sum()) < int(mask[1].sum())  # the short image's sequence is shorter, padded at the end
    logits = bridge.language_model(inputs_embeds=embeds, attention_mask=mask).logits
    first = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=IGNORE)
    assert torch.allclose(first, alone, atol=1e-5)  # in a batch with a longer image, the same loss as alone
    # the tokens past an image's length are not read: changing them changes nothing
    changed = image.clone()
    changed[0, 2:] = 100.0
    assert torch.allclose(bridge.caption_loss(changed, CAPTIONS[:2], lengths=lengths),
                          bridge.caption_loss(image, CAPTIONS[:2], lengths=lengths))


def test_tokenflex_budgets_cut_each_image_to_a_drawn_prefix(llm_folder):
    from vtok.losses.term import TermInputs
    from vtok.tokenizers import TokenizerOutput, Tokens

    flexible = Tokenizer(encoder={"kind": "latent_tokens", "num_tokens": 8, "patch_size": 8, "width": 32, "depth": 1,
                                  "heads": 2, "out_dim": 4, "image_size": 32},
                         quantizer={"kind": "fsq", "levels": [5, 5, 5, 5]},
                         decoder={"kind": "latent_tokens", "num_tokens": 8, "patch_size": 8, "width": 32, "depth": 1,
                                  "heads": 2, "image_size": 32, "nested_dropout": {"mode": "uniform"}},
                         image_size=32)
    term = CaptionLoss({"source": str(llm_folder)}, budgets=[2, 4])
    term.bind({"quantized": 4}, None)
    term.bind_tokenizer(flexible)
    output = TokenizerOutput(torch.zeros(16, 3, 32, 32), Tokens(None, torch.zeros(16, 8, 4), (8,)))
    term.train()
    drawn = term.lengths(TermInputs(torch.zeros(16, 3, 32, 32), output), 8)
    assert set(drawn.tolist()) == {2, 4}
    term.eval()  # held-out: every token
    assert term.lengths(TermInputs(torch.zeros(16, 3, 32, 32), output), 8) is None
    with pytest.raises(ValueError, match="budgets needs a flexible"):
        CaptionLoss({"source": str(llm_folder)}, budgets=[2]).bind_tokenizer(_tokenizer())
