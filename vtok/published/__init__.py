"""Published tokenizers in and out: diffusers folders, LDM / Stable Diffusion and taming VQGAN checkpoints.

:func:`from_published` reads one into an ordinary :class:`~vtok.Tokenizer`; :func:`write_diffusers` writes a conv
tokenizer as a diffusers ``AutoencoderKL`` / ``VQModel`` folder. Third-party pickles are read with
``weights_only=True`` and a short allowlist (:mod:`vtok.published.pickles`).
"""

from .diffusers import write_folder as write_diffusers
from .importer import FORMATS, ImportRecord, from_published, infer_ldm_config
from .ldm import LayoutError, from_reference, to_reference
from .pickles import UnsafePickleError, load_pickle

__all__ = ["FORMATS", "ImportRecord", "LayoutError", "UnsafePickleError", "from_published", "from_reference",
           "infer_ldm_config", "load_pickle", "to_reference", "write_diffusers"]
