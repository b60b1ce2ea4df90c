"""Frozen pretrained networks that supervise training: image teachers and text encoders (through transformers).

They are training-time parts: an exported tokenizer never carries them. Each loads by local path or hub id
(``source``), or is built with random weights from a ``transformers`` config (``config``: toy runs and tests,
said in the log); a source that cannot be loaded stops the run before training, naming the config key.
"""

from .image import ImageTeacher, TeacherFeatures
from .loading import load_transformers_model
from .text import TextEncoder

__all__ = ["ImageTeacher", "TeacherFeatures", "TextEncoder", "load_transformers_model"]
