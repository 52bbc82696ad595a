"""The built-in procedural scene world: CLEVR-like images with captions, questions and labels."""

from polymodal.data.world.scene import Scene, SceneObject
from polymodal.data.world.writer import WorldConfig, WorldManifest, generate_world

__all__ = ["Scene", "SceneObject", "WorldConfig", "WorldManifest", "generate_world"]
