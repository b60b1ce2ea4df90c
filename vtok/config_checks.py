"""Values a run config must satisfy, checked before anything is built: each problem names its key and the range.

Without this a negative learning rate, an empty codebook or an image size the patch does not divide surfaces as an
unrelated exception deep inside torch (``argmax(): Expected reduction dim 0 to have non-zero size``), or not at
all: ``trainer.max_steps=-5`` quietly trains.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """One or more config values are outside their allowed range (every problem is listed, key by key)."""


# (key, test, allowed range in words); a key that is absent or null is not checked
Rule = tuple[str, Callable[[Any], bool], str]


def _number(test: Callable[[float], bool]) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
            and test(value)

    return check


def _integer(test: Callable[[int], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, int) and not isinstance(value, bool) and test(value)


def _at_least(n: int) -> tuple[Callable[[Any], bool], str]:
    """``(test, words)`` of an integer ``>= n``."""
    return _integer(lambda v: v >= n), f"an integer >= {n}"


def _integers(test: Callable[[int], bool]) -> Callable[[Any], bool]:
    """A non-empty list of integers that each pass ``test``."""
    return lambda value: isinstance(value, list) and len(value) > 0 and all(_integer(test)(n) for n in value)


LEVELS: Rule = ("quantizer.levels", _integers(lambda n: n >= 2), "a non-empty list of integers >= 2 (FSQ levels "
                "per channel)")

RULES: list[Rule] = [
    ("module.lr", _number(lambda v: v > 0), "a number > 0"),
    ("module.disc_lr", _number(lambda v: v > 0), "a number > 0 (or null: module.lr)"),
    ("module.weight_decay", _number(lambda v: v >= 0), "a number >= 0"),
    ("module.warmup_steps", *_at_least(0)),
    ("module.min_lr_ratio", _number(lambda v: 0 <= v <= 1), "a number in [0, 1]"),
    ("module.total_steps", *_at_least(1)),
    ("module.time_budget", _number(lambda v: v > 0), "seconds > 0 (or null: no budget)"),
    ("module.grad_clip", _number(lambda v: v >= 0), "a number >= 0 (0: no clipping)"),
    ("module.ema_decay", _number(lambda v: 0 <= v < 1), "a number in [0, 1) (or null: no EMA)"),
    ("module.max_bad_steps", _integer(lambda v: v >= 0), "an integer >= 0 (0: no check)"),
    ("trainer.max_steps", *_at_least(1)),
    ("trainer.val_check_interval", _number(lambda v: v > 0), "steps (an integer >= 1) or a fraction in (0, 1]"),
    ("trainer.devices", lambda v: v == "auto" or _integer(lambda n: n >= 1)(v) or isinstance(v, list),
     "auto, an integer >= 1 or a list of device ids"),
    ("trainer.num_nodes", *_at_least(1)),
    ("data.image_size", _integer(lambda v: v >= 8), "an integer >= 8 (pixels)"),
    ("data.batch_size", *_at_least(1)),
    ("data.val_batch_size", *_at_least(1)),
    ("data.num_workers", *_at_least(0)),
    ("quantizer.codebook_size", *_at_least(2)),
    ("quantizer.codebook_dim", *_at_least(1)),
    ("quantizer.bits", _integer(lambda v: 1 <= v <= 64), "an integer in 1..64 (a token id is one int64)"),
    LEVELS,
    ("quantizer.depth", _integer(lambda v: v >= 1), "an integer >= 1 (residual stages)"),
    ("quantizer.groups", *_at_least(1)),
    ("quantizer.quantizer.codebook_size", *_at_least(2)),
    ("quantizer.quantizer.levels", *LEVELS[1:]),
    ("quantizer.latent_dim", *_at_least(1)),
    ("arch.width", *_at_least(1)),
    ("arch.depth", *_at_least(0)),
    ("arch.heads", *_at_least(1)),
    ("arch.patch_size", *_at_least(1)),
    ("arch.num_tokens", *_at_least(1)),
    ("arch.channel_mult", _integers(lambda n: n >= 1), "a non-empty list of integers >= 1"),
]


def _get(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def check_run_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` listing every value outside its range, and image sizes the model cannot cut.

    Raises:
        ConfigError: ``key=value: allowed range`` per problem.
    """
    problems = []
    for key, test, allowed in RULES:
        value = _get(cfg, key)
        if value is not None and not test(value):
            problems.append(f"{key}={value!r}: must be {allowed}")
    size = _get(cfg, "data.image_size")
    patch = _get(cfg, "model.encoder.patch_size")
    if isinstance(size, int) and isinstance(patch, int) and patch > 0 and size % patch:
        problems.append(f"data.image_size={size} is not a multiple of the patch size model.encoder.patch_size="
                        f"{patch} (arch.patch_size): use a multiple such as {max(patch, size // patch * patch)}")
    if problems:
        raise ConfigError("invalid config values (nothing was built or trained):\n  " + "\n  ".join(problems))
