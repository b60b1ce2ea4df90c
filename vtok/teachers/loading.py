"""Loading a ``transformers`` model from a local folder, a hub id, or a config, with errors that name the key."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vtok.weights import MissingWeightsError

log = logging.getLogger(__name__)


class Frozen(nn.Module):
    """Holds a pretrained network that never trains and is never saved.

    The network is kept out of ``parameters()`` and ``state_dict()`` (so no optimiser, DDP bucket, EMA copy or
    checkpoint carries a copy of a teacher), but moves with ``.to()`` like any submodule, and stays in eval mode.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.__dict__["network"] = network.eval().requires_grad_(False)

    def _apply(self, fn: Any, recurse: bool = True) -> Frozen:
        self.__dict__["network"] = self.network._apply(fn)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> Frozen:
        return super().train(False)


def load_transformers_model(source: str | None, config: dict[str, Any] | None, config_key: str, what: str,
                            auto_class: str = "AutoModel", **load_kwargs: Any) -> nn.Module:
    """A ``transformers`` model from ``source`` (local folder or hub id) or, without one, built from ``config``.

    Args:
        source: folder written by ``save_pretrained`` or a hub id (fetched when the machine is online).
        config: ``{"model_type": ..., **sizes}``: a randomly initialised model (toy runs and tests only).
        config_key: the config key of ``source``, named by the error.
        what: what the model is for, for messages.
        auto_class: the ``transformers`` auto class (``AutoModel``, ``AutoModelForCausalLM``).
        load_kwargs: passed to ``from_pretrained`` (e.g. ``gguf_file``).

    Raises:
        MissingWeightsError: ``source`` cannot be loaded (missing folder, offline hub id), naming ``config_key``.
        ValueError: neither ``source`` nor ``config`` is given.
    """
    import transformers

    auto = getattr(transformers, auto_class)
    if source:
        try:
            return auto.from_pretrained(str(source), **load_kwargs)
        except (OSError, ValueError) as error:
            local = Path(str(source)).expanduser()
            where = (f"the folder {local} has no loadable model" if local.exists() else
                     f"{source!r} is neither a local folder nor a hub id this machine can fetch")
            raise MissingWeightsError(
                f"{what}: {where} ({type(error).__name__}: {str(error).splitlines()[0][:200]}). Save it with "
                f"`save_pretrained` on a machine with network and set {config_key}=/path/to/folder."
            ) from error
    if config:
        config = dict(config)
        model_type = config.pop("model_type", None)
        if not model_type:
            raise ValueError(f"{what}: a config needs a model_type (e.g. clip_vision_model, bert)")
        log.warning("%s: RANDOM weights built from a %s config (toy runs and tests only; its numbers mean "
                    "nothing)", what, model_type)
        # the same config gives the same weights (a frozen one rebuilt later is the one trained against),
        # without touching the run's random state
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return auto.from_config(transformers.AutoConfig.for_model(model_type, **config))
    raise ValueError(f"{what}: set {config_key} (a folder or hub id), or a config to build a random one")
