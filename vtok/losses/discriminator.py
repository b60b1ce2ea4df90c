"""PatchGAN discriminator: a score per overlapping patch rather than one per image."""

from __future__ import annotations

from torch import Tensor, nn


class PatchDiscriminator(nn.Module):
    """``(B, C, H, W)`` images -> ``(B, 1, H', W')`` real/fake logits, one per receptive-field patch.

    Args:
        in_channels: image channels.
        channels: width of the first layer, doubled per layer up to ``8 * channels``.
        num_layers: strided layers; the receptive field is 70 px for 3 layers.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, num_layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < num_layers else 1
            layers += [nn.Conv2d(width, out, 4, stride, 1, bias=False), nn.GroupNorm(min(32, out), out),
                       nn.LeakyReLU(0.2)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.layers = nn.Sequential(*layers)
        self.apply(_init)

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images)


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
