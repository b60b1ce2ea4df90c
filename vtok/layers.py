"""vtok's layers, written down once as data: which modules sit on which layer, and the few third-party packages
that only some layers may import.

A module may import from its own layer and the layers below it, never from a layer above
(``tests/test_layers.py`` checks every import of every module, including imports inside functions, against this
table, and checks that the README's layout table says the same). A module belongs to the layer of the longest
prefix in :data:`LAYERS` that names it or a package above it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layer:
    """One layer: its number (1 at the bottom), name, member modules / packages, what it is, what it needs."""

    number: int
    name: str
    members: tuple[str, ...]
    what: str
    needs: str


LAYERS: tuple[Layer, ...] = (
    Layer(1, "blocks and utilities",
          ("vtok.quantizers", "vtok.modules", "vtok.images", "vtok.distributed", "vtok.registry", "vtok.cli",
           "vtok.config", "vtok.exit_deadline", "vtok.layers"),
          "every bottleneck (one per file), conv / transformer / patch blocks, 8-bit images, PSNR and picture grids, "
          "the one home of `torch.distributed` calls, the `kind` registries, the command-line convention, where the "
          "config tree lives, the exit deadline after SIGTERM, this table",
          "torch (omegaconf / Hydra for the command line)"),
    Layer(2, "tokenizers",
          ("vtok.tokenizers", "vtok.checkpoint", "vtok.published", "vtok"),
          "`Tokenizer`, the `Encoder` / `Decoder` contract (`parts.py`), the families, the saved form "
          "(`serialization.py`), the one reader of training checkpoints (`.ckpt`), the readers and writers of "
          "published formats (diffusers, LDM, taming; third-party pickles through an allowlist)",
          "torch, safetensors"),
    Layer(3, "losses and teachers",
          ("vtok.losses", "vtok.teachers", "vtok.llm", "vtok.weights"),
          "reconstruction, LPIPS, PatchGAN, LeCam, semantic terms and their held-out figures; frozen teachers and text "
          "encoders; the LLM caption loss and its bridge; where third-party pretrained files come from",
          "lpips, transformers"),
    Layer(4, "training and data",
          ("vtok.training", "vtok.data", "vtok.config_checks"),
          "the Lightning module, EMA, schedules, callbacks, progress; datasets, shards, streams (only "
          "`data/datamodule.py` imports Lightning); the checks a run config passes before anything is built",
          "Lightning"),
    Layer(5, "evaluation and export",
          ("vtok.eval", "vtok.hub", "vtok.import_published", "vtok.probe"),
          "metrics, rFID, baselines, reports; export (with an ETT run's LLM bridge, or as a diffusers folder) and "
          "model cards; `vtok-import`; the autoregressive probe's prior and entropy coding",
          "no Lightning"),
    Layer(6, "entry points",
          ("train", "vtok.experiment", "vtok.eval.__main__", "vtok.probe.__main__", "vtok.llm.caption",
           "vtok.llm.generate"),
          "train then evaluate; `python -m vtok.eval`; `python -m vtok.probe`; `python -m vtok.llm.caption` and "
          "`python -m vtok.llm.generate` (the "
          "other commands live in their layer's module and parse their keys with `vtok.cli`)",
          "Hydra"),
)

# Third-party modules that only the named modules (and their submodules) may import.
ONLY_IN: dict[str, tuple[str, ...]] = {
    "lightning": ("vtok.training", "vtok.data.datamodule"),
    "pytorch_lightning": (),
    "hydra": ("vtok.cli", "vtok.config", "vtok.training.run", "vtok.weights", "vtok.eval.__main__",
              "vtok.probe.__main__", "train"),
    "torch.distributed": ("vtok.distributed",),
}


def layer_of(module: str) -> Layer | None:
    """The layer of a module (``vtok.quantizers.vq``), by the longest member prefix; ``None`` when none names it
    (the bare ``vtok`` member names only the package's ``__init__``)."""
    best: tuple[int, Layer] | None = None
    for layer in LAYERS:
        for member in layer.members:
            named = module == member or (member != "vtok" and module.startswith(member + "."))
            if named and (best is None or len(member) > best[0]):
                best = (len(member), layer)
    return best[1] if best else None
