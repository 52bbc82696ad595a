"""Data: the built-in scene world, on-disk formats, preprocessing and tokenisation."""

from polymodal.data.sample import Sample

__all__ = ["Sample"]
