"""The embedded sample set: real colour photographs that ship inside PyPI packages, as WebDataset shards.

Sources: ``skimage.data`` (scikit-image), ``sklearn.datasets.load_sample_images`` (scikit-learn) and
matplotlib's sample data. Three splits, by image: 7 training photos, 5 validation photos (every choice of the quick
start's recipe was made on them) and 8 test photos that no choice looked at (the report quotes these). Most test
photos are greyscale (the pip packages ship few colour ones), stored as RGB.

    python -m vtok.data.samples out=OUT_DIR
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vtok.cli import key
from vtok.cli import run as run_command

from .shards import write_shards


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _sklearn(index: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_images

        return load_sample_images().images[index]

    return load


def _stereo_motorcycle(view: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return skimage.data.stereo_motorcycle()[view]

    return load


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


def _grey(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return np.repeat(getattr(skimage.data, name)()[..., None], 3, axis=2)

    return load


def _present() -> np.ndarray:
    from matplotlib import cbook

    with cbook.get_sample_data("Minduka_Present_Blue_Pack.png") as f:
        rgba = Image.open(f).convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))


# name -> (loader, caption)
PHOTOS: dict[str, tuple[Callable[[], np.ndarray], str]] = {
    "astronaut": (_skimage("astronaut"), "a portrait of an astronaut in a spacesuit in front of a flag"),
    "rocket": (_skimage("rocket"), "a rocket on a launch pad under a blue sky"),
    "hubble_deep_field": (_skimage("hubble_deep_field"), "many galaxies on a black sky"),
    "immunohistochemistry": (_skimage("immunohistochemistry"), "a microscope image of stained tissue"),
    "retina": (_skimage("retina"), "a photograph of a human retina"),
    "china": (_sklearn(0), "a chinese temple with trees"),
    "flower": (_sklearn(1), "a close-up of a pink flower"),
    "chelsea": (_skimage("chelsea"), "a ginger cat looking to the side"),
    "coffee": (_skimage("coffee"), "a cup of coffee on a saucer"),
    "grace_hopper": (_grace_hopper, "a portrait of a woman in a navy uniform"),
    "motorcycle_left": (_stereo_motorcycle(0), "a motorcycle parked in a workshop"),
    "motorcycle_right": (_stereo_motorcycle(1), "a motorcycle parked in a workshop, seen from the right"),
    "camera": (_grey("camera"), "a black and white photograph of a man with a camera on a tripod"),
    "coins": (_grey("coins"), "a black and white photograph of old coins"),
    "moon": (_grey("moon"), "a black and white photograph of the surface of the moon"),
    "grass": (_grey("grass"), "a black and white photograph of grass"),
    "gravel": (_grey("gravel"), "a black and white photograph of gravel"),
    "brick": (_grey("brick"), "a black and white photograph of a brick wall"),
    "clock": (_grey("clock"), "a black and white photograph of a clock, blurred by motion"),
    "present": (_present, "a blue gift box with a ribbon"),
}
# Both stereo views are held out together (one would leak the other). 5 photos, ~22,000 f8 tokens: enough
# for a usage figure to mean something (uniformly drawn, they would cover 99.5% of 4,096 codes and all of 512).
VALIDATION = ("chelsea", "coffee", "grace_hopper", "motorcycle_left", "motorcycle_right")
# Added after the recipe was fixed, and never used to choose anything: the held-out figures the README quotes.
TEST = ("camera", "coins", "moon", "grass", "gravel", "brick", "clock", "present")
TRAIN = tuple(name for name in PHOTOS if name not in VALIDATION + TEST)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array[..., :3]).save(buffer, format="PNG")
    return buffer.getvalue()


def build_sample_shards(out_dir: str | Path, force: bool = False) -> Path:
    """Write ``train-000000.tar``, ``val-000000.tar`` and ``test-000000.tar`` into ``out_dir`` once; return
    ``out_dir``.

    A ``manifest.json`` records the split; an existing set with the same split is reused unless ``force``.
    """
    out_dir = Path(out_dir)
    manifest = out_dir / "manifest.json"
    split = {"train": list(TRAIN), "val": list(VALIDATION), "test": list(TEST)}
    if manifest.exists() and not force and json.loads(manifest.read_text()) == split:
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for prefix, names in (("train", TRAIN), ("val", VALIDATION), ("test", TEST)):
        items = ((name, _png(PHOTOS[name][0]()), "png", PHOTOS[name][1]) for name in names)
        summary = write_shards(items, out_dir, prefix=prefix, maxcount=1000, total=len(names))
        if summary.skipped:
            raise RuntimeError(f"could not decode sample photos {summary.skipped}")
    manifest.write_text(json.dumps(split, indent=2))
    return out_dir


@dataclass
class SamplesCommand:
    """The keys of ``python -m vtok.data.samples``."""

    out: str = key(help="folder for train-*.tar, val-*.tar and test-*.tar")
    force: bool = key(False, "rewrite the shards even if they exist")


def main(argv: list[str] | None = None) -> int:
    return run_command("python -m vtok.data.samples", __doc__.split("\n\n")[0], SamplesCommand,
                       lambda args: print(f"sample shards in {build_sample_shards(args.out, force=args.force)}"),
                       argv)


if __name__ == "__main__":
    raise SystemExit(main())
