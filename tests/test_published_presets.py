"""The published-recipe presets build their papers' networks (parameter counts against the reference code, each
with its source), and the evaluation crops named after papers give those papers' pixels."""


import pytest
import torch
from hydra.utils import instantiate

from .conftest import compose_config
from .published_networks import (
    open_magvit2_network,
    taming_count,
)

PUBLISHED = {
    # IBQ (configs/IBQ/gpu/imagenet_ibqgan_16384.yaml: taming's model.py, 4 res blocks, attention at 16, 16,384 codes)
    "ibq": (taming_count([1, 1, 2, 2, 4], [16], 256, False, 256, 16384, blocks=4), "taming Encoder/Decoder"),
    # taming-transformers configs/imagenet_vqgan.yaml (f16, 1,024 codes); 72.14 M, also in OFFLINE-MODELS.md
    "vqgan_f16": (taming_count([1, 1, 2, 2, 4], [16], 256, False, 256, 1024), "taming Encoder/Decoder"),
    # LlamaGen VQ-16 (vq_model.py: taming's trunk, attention at the lowest level, z 256, 8-d codes, 16,384 codes)
    "llamagen_vq16": (taming_count([1, 1, 2, 2, 4], [16], 256, False, 8, 16384), "taming Encoder/Decoder"),
}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_a_published_recipe_preset_builds_the_papers_network(preset):
    expected, _source = PUBLISHED[preset]
    cfg = compose_config(f"experiment={preset}", toy=False)
    with torch.device("meta"):
        tokenizer = instantiate(cfg.model)
    assert sum(p.numel() for p in tokenizer.parameters()) == expected



def test_the_open_magvit2_preset_is_its_network():
    cfg = compose_config("experiment=open_magvit2", toy=False)
    with torch.device("meta"):
        tokenizer = instantiate(cfg.model)
        published = open_magvit2_network(128, [1, 1, 2, 2, 4], 4, 18)  # imagenet_lfqgan_256_L.yaml
    count = sum(p.numel() for p in tokenizer.parameters())
    assert count == sum(p.numel() for p in published.parameters()) == 115_127_829
    assert {k.replace(".nin_shortcut.", ".skip.") for k in published.state_dict()} <= set(tokenizer.state_dict())



TITOK_COUNTS = {"titok_s128": 83_674_639, "titok_b64": 204_814_095, "titok_l32": 641_054_735}


@pytest.mark.parametrize("preset", sorted(TITOK_COUNTS))
def test_a_titok_preset_is_titoks_network(preset):
    cfg = compose_config(f"experiment={preset}", toy=False)
    with torch.device("meta"):
        tokenizer = instantiate(cfg.model)
    assert sum(p.numel() for p in tokenizer.parameters()) == TITOK_COUNTS[preset]



def test_the_adm_crop_is_guided_diffusions():
    """The ADM protocol's crop, against guided-diffusion's center_crop_arr as written there (numpy and PIL)."""
    import numpy as np
    from PIL import Image

    from vtok.data.transforms import ImageTransform

    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (600, 1000, 3), dtype=np.uint8)

    def center_crop_arr(pil_image, image_size):
        while min(*pil_image.size) >= 2 * image_size:
            pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
        scale = image_size / min(*pil_image.size)
        pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
        arr = np.array(pil_image)
        crop_y, crop_x = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
        return arr[crop_y: crop_y + image_size, crop_x: crop_x + image_size]

    expected = torch.from_numpy(center_crop_arr(Image.fromarray(array), 256)).permute(2, 0, 1).float() / 127.5 - 1
    adm = ImageTransform(size=256, mode="adm", flip=False)(Image.fromarray(array), rng)
    assert torch.equal(adm, expected)
    center = ImageTransform(size=256, mode="center", flip=False)(Image.fromarray(array), rng)
    assert center.shape == adm.shape and not torch.equal(center, adm)  # the protocols differ: reports name theirs



@pytest.mark.parametrize(("mode", "interpolation"), [("resize_bicubic", "BICUBIC"), ("resize_bilinear", "BILINEAR")])
def test_titoks_and_open_magvit2s_crops_are_torchvisions(mode, interpolation):
    """TiTok evaluates on Resize(256, bicubic, antialias) + CenterCrop(256), Open-MAGVIT2 / IBQ on Resize(256) +
    CenterCrop(256) (bilinear): the crops named after them give those pixels."""
    import numpy as np
    from PIL import Image
    from torchvision import transforms

    from vtok.data.transforms import ImageTransform

    array = np.random.default_rng(0).integers(0, 256, (300, 411, 3), dtype=np.uint8)
    reference = transforms.Compose([
        transforms.Resize(64, interpolation=getattr(transforms.InterpolationMode, interpolation), antialias=True),
        transforms.CenterCrop(64), transforms.PILToTensor()])(Image.fromarray(array))
    ours = ImageTransform(size=64, mode=mode, flip=False)(Image.fromarray(array), np.random.default_rng(0))
    assert torch.equal(ours, reference.float() / 127.5 - 1)
    assert not torch.equal(ours, ImageTransform(size=64, mode="adm", flip=False)(Image.fromarray(array),
                                                                                 np.random.default_rng(0)))

