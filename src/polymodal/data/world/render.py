"""Render a scene graph to a PIL image: flat 'rubber' or shiny 'metal' objects on a soft floor.

Drawing happens at 4x resolution and is downsampled, which anti-aliases the edges so that small
canvases (64 px) still show shape and material clearly.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from polymodal.data.world.scene import COLORS, Scene, SceneObject

SUPERSAMPLE = 4


def _shade(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, c * factor))) for c in rgb)  # type: ignore[return-value]


def _mix(rgb: tuple[int, int, int], other: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    return tuple(int(a * (1 - t) + b * t) for a, b in zip(rgb, other))  # type: ignore[return-value]


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, side: int) -> None:
    cx, cy, r = obj.x * side, obj.y * side, obj.radius * side
    base = COLORS[obj.color]
    dark = _shade(base, 0.65)
    light = _mix(base, (255, 255, 255), 0.35)
    if obj.shape == "cube":
        # front face plus a lighter top face: reads as a block, not a flat square
        draw.rectangle([cx - r, cy - r * 0.7, cx + r, cy + r], fill=base, outline=dark, width=max(1, side // 160))
        draw.polygon([(cx - r, cy - r * 0.7), (cx - r * 0.6, cy - r), (cx + r * 1.0, cy - r), (cx + r, cy - r * 0.7)], fill=light)
    elif obj.shape == "sphere":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=base, outline=dark, width=max(1, side // 160))
    elif obj.shape == "cylinder":
        draw.rectangle([cx - r * 0.8, cy - r * 0.7, cx + r * 0.8, cy + r * 0.8], fill=base)
        draw.ellipse([cx - r * 0.8, cy + r * 0.55, cx + r * 0.8, cy + r], fill=base)
        draw.ellipse([cx - r * 0.8, cy - r, cx + r * 0.8, cy - r * 0.4], fill=light, outline=dark)
    elif obj.shape == "cone":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=base, outline=dark)
        draw.ellipse([cx - r, cy + r * 0.6, cx + r, cy + r], fill=dark)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")
    if obj.material == "metal":
        # a specular highlight and a second glint: 'metal' must be visible at 64 px
        hr = r * 0.35
        hx, hy = cx - r * 0.35, cy - r * 0.3
        draw.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=(255, 255, 255))
        gr = r * 0.15
        draw.ellipse([cx + r * 0.3 - gr, cy + r * 0.35 - gr, cx + r * 0.3 + gr, cy + r * 0.35 + gr], fill=_mix(base, (255, 255, 255), 0.7))


def render_scene(scene: Scene, size: int, noise_seed: int) -> Image.Image:
    """Draw back to front (by y) so nearer objects overlap farther ones, like a camera would see."""
    side = size * SUPERSAMPLE
    rng = np.random.default_rng(noise_seed)
    # floor: a vertical gradient with a slight random tint, so backgrounds are not all identical
    top, bottom = rng.uniform(150, 175), rng.uniform(195, 220)
    ramp = np.linspace(top, bottom, size, dtype=np.float32)[:, None, None]
    tint = rng.uniform(-6, 6, size=3).astype(np.float32)
    floor = np.clip(ramp + tint[None, None, :] + rng.normal(0, 2.0, (size, size, 3)), 0, 255).astype(np.uint8)
    canvas = Image.fromarray(floor).resize((side, side), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for obj in sorted(scene.objects, key=lambda o: o.y):
        # a soft shadow under each object grounds it on the floor
        cx, cy, r = obj.x * side, obj.y * side, obj.radius * side
        draw.ellipse([cx - r * 0.9, cy + r * 0.6, cx + r * 1.1, cy + r * 1.15], fill=(110, 110, 115))
        _draw_object(draw, obj, side)
    img = canvas.resize((size, size), Image.LANCZOS)
    return img.filter(ImageFilter.SMOOTH) if size >= 128 else img
