"""``polymodal quickstart``: the first command a new user runs.

Today it builds the built-in world and shows what is in it; training, evaluation and the report join
it as those capabilities land, so the same command keeps being the one place to start.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from polymodal.data.world import WorldConfig, generate_world


def _existing_world(root: Path, cfg: WorldConfig) -> bool:
    """Reuse a world that was generated with the same settings (generation is seeded, so it is identical)."""
    manifest = root / "world.json"
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text())["config"] == asdict(cfg)
    except (ValueError, KeyError):
        return False


def run_quickstart(out: Path, scenes: int = 2000, seed: int = 0) -> Path:
    out = Path(out)
    world_dir = out / "world"
    cfg = WorldConfig(num_scenes=scenes, seed=seed)
    print(f"[1/2] built-in world ({scenes} scenes, seed {seed})")
    if _existing_world(world_dir, cfg):
        print(f"      reusing {world_dir} (same settings)")
        counts = json.loads((world_dir / "world.json").read_text())["counts"]
    else:
        manifest = generate_world(world_dir, cfg, progress=True)
        print(manifest.summary())
        counts = manifest.counts
    print("[2/2] data check")
    from polymodal.data.check import check_spec

    reports = check_spec(world_dir, verify_images=False)
    problems = sum(r.num_problems for r in reports)
    print(f"      {len(reports)} sources read, {problems} problems")
    print()
    print(f"Done. The world is in {world_dir} ({counts['images_train']} training images).")
    print(f"  look inside:   polymodal data stats {world_dir}")
    print(f"  check it:      polymodal data check {world_dir}")
    print("  next:          training and evaluation run here once that capability lands (see README).")
    return world_dir
