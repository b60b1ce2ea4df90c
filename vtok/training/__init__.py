"""Lightning training: the module, EMA, schedules and callbacks."""

from .callbacks import ReconstructionGrid, image_grid
from .ema import EMA
from .module import TokenizerModule

__all__ = ["EMA", "ReconstructionGrid", "TokenizerModule", "image_grid"]
