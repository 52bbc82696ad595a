"""Pretrained checkpoints: the model zoo, offline resolution, and Hugging Face adapters (``pip install 'polymodal[hf]'``)."""

from polymodal.hub.zoo import ZOO, CheckpointNotFound, ZooEntry, resolve, zoo_status

__all__ = ["ZOO", "CheckpointNotFound", "ZooEntry", "resolve", "zoo_status"]
