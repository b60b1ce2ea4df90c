import urllib.error

import pytest
import torch

from vtok.losses import LPIPS, MissingWeightsError, PatchDiscriminator, TokenizerLoss
from vtok.losses.gan import adaptive_weight, discriminator_loss, generator_loss


def test_missing_lpips_weights_name_the_file_and_the_key(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"loss\.perceptual\.backbone_path=/path/to/vgg16-397923af\.pth"):
        LPIPS(net="vgg", backbone_path=str(tmp_path / "nope.pth"))


def test_lpips_without_network_fails_with_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(MissingWeightsError) as error:
        TokenizerLoss(perceptual_weight=1.0)
    message = str(error.value)
    assert "vgg16-397923af.pth" in message and "loss.perceptual.backbone_path" in message
    assert "URLError" in message


def test_lpips_loads_a_local_backbone_file_whose_hash_matches(tmp_path, monkeypatch):
    """A random VGG saved here stands in for the published file: refused under the real hash, loaded when the
    hash its name promises is this file's."""
    import dataclasses

    import torchvision

    from vtok import weights

    path = tmp_path / "vgg16-397923af.pth"
    vgg = torchvision.models.vgg16()
    torch.save(vgg.state_dict(), path)
    with pytest.raises(weights.WrongWeightsError, match=r"does not start with 397923af.*loss\.perceptual"):
        LPIPS(net="vgg", backbone_path=str(path))
    stand_in = dataclasses.replace(weights.FILES["lpips_vgg"], sha256_prefix=weights.sha256(path)[:8])
    monkeypatch.setitem(weights.FILES, "lpips_vgg", stand_in)
    lpips = LPIPS(net="vgg", backbone_path=str(path))
    assert torch.equal(lpips.model.net.slice1[0].weight, vgg.features[0].weight)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(lpips(x, x), torch.zeros(2), atol=1e-6)
    assert (lpips(x, x.flip(-1)) > 0).all()


def test_lpips_gradient_reaches_the_input():
    lpips = LPIPS(random_backbone=True)
    x = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_()
    lpips(x, torch.zeros_like(x)).sum().backward()
    assert x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in lpips.parameters())


def test_gan_losses():
    real, fake = torch.full((2, 1, 4, 4), 2.0), torch.full((2, 1, 4, 4), -2.0)
    assert discriminator_loss(real, fake, "hinge") == 0.0  # both beyond the margin
    assert torch.isclose(discriminator_loss(real, fake, "non_saturating"), torch.nn.functional.softplus(
        torch.tensor(-2.0)))
    assert generator_loss(fake, "hinge") == 2.0
    with pytest.raises(ValueError, match="unknown GAN loss"):
        generator_loss(fake, "wasserstein")


def test_adaptive_weight_is_gradient_ratio():
    w = torch.ones(3, requires_grad=True)
    weight = adaptive_weight((4 * w).sum(), (2 * w).sum(), w)
    assert torch.isclose(weight, torch.tensor(2.0), atol=1e-3)
    assert adaptive_weight((4 * w).sum(), (1e-9 * w).sum(), w, max_weight=10.0) == 10.0


def test_patch_discriminator_shape():
    logits = PatchDiscriminator(channels=8, num_layers=3)(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 1, 6, 6)


def test_an_unknown_gan_loss_is_refused_when_the_loss_is_built_not_when_the_gan_starts():
    with pytest.raises(ValueError, match=r"loss.gan_loss='hinj': use one of \['hinge', 'non_saturating'\]"):
        TokenizerLoss(disc_weight=0.1, disc_start=100_000, gan_loss="hinj")


def test_a_wrong_file_in_the_hub_cache_is_refused_by_its_hash(tmp_path, monkeypatch):
    from vtok.weights import WrongWeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"half a download")
    with pytest.raises(WrongWeightsError, match=f"{cached}.*does not start with 397923af"):
        LPIPS(net="vgg")
