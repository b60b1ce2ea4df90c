"""Lightning training: the module, EMA, schedules and callbacks."""

from .callbacks import ReconstructionGrid
from .ema import EMA
from .module import TokenizerModule
from .progress import TrainingProgress, route_lightning_logs

__all__ = ["EMA", "ReconstructionGrid", "TokenizerModule", "TrainingProgress", "route_lightning_logs"]
