"""Data sources for tokenizer training: WebDataset shards, image folders, samples and synthetic images."""

from .datamodule import TokenizerDataModule
from .folder import ImageFolder
from .samples import build_sample_shards
from .shards import write_shards
from .stream import RandomSampleStream
from .synthetic import SyntheticCaptions
from .transforms import BadImage, ImageTransform, decode_image, to_tensor, to_uint8
from .webdataset import ShardDataset, expand_urls

__all__ = [
    "BadImage", "ImageFolder", "ImageTransform", "RandomSampleStream", "ShardDataset", "SyntheticCaptions",
    "TokenizerDataModule", "build_sample_shards", "decode_image", "expand_urls", "to_tensor", "to_uint8",
    "write_shards",
]
