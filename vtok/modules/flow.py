"""Rectified flow: the straight path between an image and noise, its velocity target, and ODE samplers.

Convention (as in FlexTok and SD3): ``x_t = (1 - t) * x + t * noise`` with ``t`` in ``[0, 1]``; ``t = 0`` is the
image, ``t = 1`` pure Gaussian noise, and the velocity along the path is ``dx_t / dt = noise - x``. A network
trained to predict that velocity decodes by integrating from ``t = 1`` down to ``t = 0``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

TIME_DISTRIBUTIONS = ("uniform", "logit_normal")
SOLVERS = ("euler", "heun")
WEIGHTINGS = ("velocity", "image")

Velocity = Callable[[Tensor, Tensor], Tensor]  # (x_t (B, ...), t (B,)) -> velocity (B, ...)


@dataclass(frozen=True)
class SamplerSettings:
    """How a generative decoder turns tokens into an image.

    Attributes:
        steps: ODE steps from ``t = 1`` to ``t = 0`` (each costs one decoder pass; two with ``heun``, doubled
            again by guidance).
        guidance: classifier-free guidance scale; ``1.0`` is unguided (one pass per step), ``> 1`` pushes the
            velocity away from the "no tokens" prediction.
        seed: seeds the starting noise, so a decode is reproducible; drawn on the CPU, so a seed gives the same
            noise on every device.
        solver: ``euler`` (first order) or ``heun`` (second order, two passes per step).
    """

    steps: int = 25
    guidance: float = 1.0
    seed: int = 0
    solver: str = "euler"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"sampling steps={self.steps}: need at least 1")
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose one of {list(SOLVERS)}")
        if self.guidance < 0:
            raise ValueError(f"guidance={self.guidance} must be >= 0 (1.0 is unguided)")

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def sample_times(batch: int, distribution: str = "logit_normal", device: torch.device | None = None,
                 generator: torch.Generator | None = None, mean: float = 0.0, std: float = 1.0) -> Tensor:
    """``(batch,)`` training times in ``(0, 1)``.

    ``uniform`` draws ``t`` uniformly; ``logit_normal`` draws ``sigmoid(N(mean, std))``, which spends training on
    the middle of the path where the velocity is hardest to predict (SD3's choice, FlexTok's too).
    """
    if distribution == "uniform":
        return torch.rand(batch, generator=generator, device=device)
    if distribution == "logit_normal":
        return torch.sigmoid(torch.randn(batch, generator=generator, device=device) * std + mean)
    raise ValueError(f"unknown time distribution {distribution!r}; choose one of {list(TIME_DISTRIBUTIONS)}")


def interpolate(images: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """``x_t = (1 - t) x + t noise`` for ``(B, ...)`` images and noise and ``(B,)`` times."""
    t = t.view(-1, *([1] * (images.ndim - 1))).to(images.dtype)
    return (1 - t) * images + t * noise


def flow_loss(velocity: Velocity, images: Tensor, noise: Tensor, t: Tensor, weighting: str = "velocity"
              ) -> tuple[Tensor, Tensor]:
    """Rectified-flow loss of a velocity model at times ``t``.

    Args:
        velocity: ``(x_t, t) -> (B, ...)`` predicted velocity.
        images, noise: ``(B, ...)`` endpoints of the path.
        t: ``(B,)`` times.
        weighting: how the squared velocity error is weighted over time: ``velocity`` (uniformly) or ``image``
            (by ``t**2``, which makes it the squared error of the image estimate ``x_t - t * v``: every time
            counts alike in pixels, so the noisiest times, where only the tokens tell the image, are not
            drowned by the nearly clean ones).

    Returns:
        ``(loss, estimate)``: the weighted mean squared error to ``noise - images`` (a scalar), and the one-step
        image estimate ``x_t - t * v`` ``(B, ...)`` (what the model believes the image is).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {list(WEIGHTINGS)}")
    x_t = interpolate(images, noise, t)
    predicted = velocity(x_t, t)
    error = (predicted.float() - (noise - images).float()).pow(2)
    t_ = t.view(-1, *([1] * (images.ndim - 1)))
    loss = (error * t_.float() ** 2).mean() if weighting == "image" else error.mean()
    estimate = x_t - t_.to(x_t.dtype) * predicted
    return loss, estimate


def guided(conditional: Tensor, unconditional: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: ``unconditional + scale * (conditional - unconditional)``."""
    return unconditional + scale * (conditional - unconditional)


def integrate(velocity: Velocity, noise: Tensor, steps: int, solver: str = "euler") -> Tensor:
    """Integrate ``dx/dt = velocity(x, t)`` from ``t = 1`` (``noise``, ``(B, ...)``) to ``t = 0`` in ``steps``
    uniform steps; returns ``(B, ...)`` images."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {list(SOLVERS)}")
    times = torch.linspace(1.0, 0.0, steps + 1, device=noise.device)
    x = noise
    for t, t_next in itertools.pairwise(times):
        dt = t_next - t  # negative: integrating towards the image
        v = velocity(x, t.expand(len(x)))
        if solver == "heun":
            v_next = velocity(x + dt * v, t_next.expand(len(x)))
            v = (v + v_next) / 2
        x = x + dt * v
    return x
