"""Data sources for tokenizer training: WebDataset shards, image folders, samples and synthetic images.

Importing this package does not import Lightning: :class:`TokenizerDataModule` (the one Lightning part) loads
on first use, so evaluation can read the same datasets without the trainer installed.
"""

from typing import Any

from .decode import BadImage, decode_image, decode_pixels
from .depth import DepthTransform, decode_depth
from .folder import ImageFolder
from .hf import HFImages
from .samples import build_sample_shards
from .shards import write_shards
from .stream import RandomSampleStream
from .synthetic import SyntheticCaptions
from .transforms import Crop, ImageTransform, to_tensor, to_uint8
from .validation import build_dataset, collate_same_size, validation_loader
from .webdataset import ShardDataset, expand_urls

__all__ = [
    "BadImage", "Crop", "DepthTransform", "HFImages", "ImageFolder", "ImageTransform", "RandomSampleStream",
    "ShardDataset", "SyntheticCaptions", "TokenizerDataModule", "build_dataset", "build_sample_shards",
    "collate_same_size", "decode_depth", "decode_image", "decode_pixels", "expand_urls", "to_tensor", "to_uint8",
    "validation_loader", "write_shards",
]


def __getattr__(name: str) -> Any:
    if name == "TokenizerDataModule":
        from .datamodule import TokenizerDataModule

        return TokenizerDataModule
    raise AttributeError(f"module 'vtok.data' has no attribute {name!r}")
