"""Clips of the built-in world: a scene whose objects slide or appear over a few frames.

A clip is a scene of 2-4 objects (the world's colours, shapes, sizes and materials) plus one or two
*events*: an object sliding left/right/up/down over several frames, or an object appearing at some
frame. Every frame is drawn by the image world's renderer (``render.render_scene``) from the scene
with the objects' positions at that frame, so clips and still images look alike and there is no
second drawing code to keep in step.

Design choices that the texts and the statement task rely on:

* colours are unique within a clip, so "the red object" always names one object;
* events happen to different objects, and in a two-event clip the two objects differ in size, so the
  clip has exactly one low and one high sound (see ``sound.py``) and "the low sound" is definite;
* onsets are drawn from the same range for slides and appearances, and two onsets are at least two
  frames apart, so the two sounds never overlap and their timing says nothing about the event kind;
* trajectories are checked frame by frame, so no object ever covers another (a moving object stays
  visible, which the pixel-shift test relies on).

Everything about a clip comes from ``numpy.random.default_rng([seed, clip_id, ...])``, so a clip is
the same whatever else is generated, in whatever order or process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from polymodal.data.world.render import render_scene
from polymodal.data.world.scene import COLORS, MATERIALS, RADIUS, SHAPES, SIZES, Scene, SceneObject

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
STEP: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
EVENT_KINDS: tuple[str, ...] = ("slide", "appear")
# P(an event is an appearance): (3 - sqrt 5) / 2 makes "did anything appear?" a yes about half the time
# when clips have one or two events with equal probability.
P_APPEAR = 0.38
MIN_FRAMES = 6
_GAP = 0.03  # clearance between any two objects at every frame, as a fraction of the canvas


@dataclass(frozen=True)
class Event:
    """One thing that happens in a clip; ``obj`` indexes ``Clip.objects``.

    A slide moves the object linearly from its start position by ``distance`` (fraction of the canvas)
    in ``direction`` between frame ``onset`` and frame ``onset + duration``; an appearance makes the
    object visible from frame ``onset`` on (``direction`` None, ``distance`` 0, ``duration`` 0).
    """

    kind: str
    obj: int
    onset: int
    duration: int
    direction: str | None = None
    distance: float = 0.0


@dataclass(frozen=True)
class Clip:
    """A scene at frame 0 (appearing objects at the place they appear) and its events."""

    clip_id: int
    objects: tuple[SceneObject, ...]
    events: tuple[Event, ...]
    frames: int
    fps: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps

    def event_of(self, obj: int) -> Event | None:
        return next((e for e in self.events if e.obj == obj), None)

    def position(self, obj: int, t: int) -> tuple[float, float] | None:
        """Centre of object ``obj`` at frame ``t``, or None while it has not appeared yet."""
        o = self.objects[obj]
        e = self.event_of(obj)
        if e is None:
            return o.x, o.y
        if e.kind == "appear":
            return (o.x, o.y) if t >= e.onset else None
        frac = min(1.0, max(0.0, (t - e.onset) / e.duration))
        dx, dy = STEP[e.direction or "left"]
        return o.x + dx * e.distance * frac, o.y + dy * e.distance * frac

    def scene_at(self, t: int) -> Scene:
        """The still scene of frame ``t``: visible objects at their positions then."""
        objs = []
        for i, o in enumerate(self.objects):
            p = self.position(i, t)
            if p is not None:
                objs.append(SceneObject(o.shape, o.color, o.size, o.material, round(p[0], 4), round(p[1], 4)))
        return Scene(self.clip_id, tuple(objs))

    def to_json(self) -> dict[str, Any]:
        return {
            "clip_id": self.clip_id,
            "frames": self.frames,
            "fps": self.fps,
            "objects": [asdict(o) for o in self.objects],
            "events": [asdict(e) for e in self.events],
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> Clip:
        return Clip(
            int(d["clip_id"]),
            tuple(SceneObject(**o) for o in d["objects"]),
            tuple(Event(**e) for e in d["events"]),
            int(d["frames"]),
            int(d["fps"]),
        )


def slide_duration(frames: int) -> int:
    """Frames a slide takes: about half the clip, so motion is visible over several frames."""
    return max(2, frames // 2 - 1)


def onset_range(frames: int) -> tuple[int, int]:
    """Inclusive onset range shared by both event kinds (1: an appearance at frame 0 is not visible)."""
    return 1, frames - 1 - slide_duration(frames)


def _onsets(rng: np.random.Generator, frames: int, n: int) -> list[int]:
    lo, hi = onset_range(frames)
    while True:
        picks = sorted(int(v) for v in rng.integers(lo, hi + 1, size=n))
        if n == 1 or picks[1] - picks[0] >= 2:
            return [int(p) for p in rng.permutation(picks)]


def _track(x: float, y: float, ev: Event | None, frames: int) -> list[tuple[float, float] | None]:
    probe = Clip(0, (SceneObject("cube", "red", "small", "rubber", x, y),), (ev,) if ev else (), frames, 1)
    return [probe.position(0, t) for t in range(frames)]


def _clear(track: list[tuple[float, float] | None], r: float, placed: list[tuple[list[Any], float]]) -> bool:
    for other, ro in placed:
        for p, q in zip(track, other):
            if p is None or q is None:
                continue
            if (p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 < (r + ro + _GAP) ** 2:
                return False
    return True


def sample_clip(seed: int, clip_id: int, frames: int = 8, fps: int = 8, max_tries: int = 200) -> Clip:
    """Draw one clip from its own seed: attributes, events, then positions by rejection."""
    if frames < MIN_FRAMES:
        raise ValueError(
            f"clips need at least {MIN_FRAMES} frames (two separated onsets and a slide), got {frames}"
        )
    rng = np.random.default_rng([seed, clip_id, 11])
    for _ in range(max_tries):
        n = int(rng.integers(2, 5))
        n_events = int(rng.integers(1, 3))
        colors = [tuple(COLORS)[int(i)] for i in rng.choice(len(COLORS), size=n, replace=False)]
        sizes = [SIZES[int(rng.integers(len(SIZES)))] for _ in range(n)]
        if n_events == 2:
            sizes[1] = "small" if sizes[0] == "large" else "large"  # one low and one high sound
        kinds = ["appear" if rng.random() < P_APPEAR else "slide" for _ in range(n_events)]
        onsets = _onsets(rng, frames, n_events)
        objects: list[SceneObject] = []
        events: list[Event] = []
        placed: list[tuple[list[Any], float]] = []
        for i in range(n):
            r = RADIUS[sizes[i]]
            for _ in range(100):
                x, y = (float(v) for v in rng.uniform(r + 0.02, 1 - r - 0.02, size=2))
                ev: Event | None = None
                if i < n_events:
                    if kinds[i] == "slide":
                        d = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
                        dist = round(float(rng.uniform(0.25, 0.4)), 4)
                        ex, ey = x + STEP[d][0] * dist, y + STEP[d][1] * dist
                        if not (r + 0.02 <= ex <= 1 - r - 0.02 and r + 0.02 <= ey <= 1 - r - 0.02):
                            continue
                        ev = Event("slide", i, onsets[i], slide_duration(frames), d, dist)
                    else:
                        ev = Event("appear", i, onsets[i], 0)
                track = _track(round(x, 4), round(y, 4), ev, frames)
                if _clear(track, r, placed):
                    break
            else:
                break  # no room for this object: draw the clip again
            placed.append((track, r))
            objects.append(
                SceneObject(
                    shape=SHAPES[int(rng.integers(len(SHAPES)))],
                    color=colors[i],
                    size=sizes[i],
                    material=MATERIALS[int(rng.integers(len(MATERIALS)))],
                    x=round(x, 4),
                    y=round(y, 4),
                )
            )
            if ev is not None:
                events.append(ev)
        if len(objects) == n:
            # shuffle the object order so that "event objects come first" is not a cue anywhere
            order = [int(i) for i in rng.permutation(n)]
            where = {old: new for new, old in enumerate(order)}
            shuffled = tuple(objects[old] for old in order)
            remapped = tuple(
                Event(e.kind, where[e.obj], e.onset, e.duration, e.direction, e.distance)
                for e in sorted(events, key=lambda e: e.onset)
            )
            return Clip(clip_id, shuffled, remapped, frames, fps)
    raise RuntimeError(f"could not place clip {clip_id} without overlaps")


def render_clip(clip: Clip, size: int, noise_seed: int) -> np.ndarray:
    """uint8 frames ``[T, size, size, 3]``; one floor (``noise_seed``) for all frames, so only objects change.

    Frames before an event starts and after it ends show the same scene; each distinct scene is drawn
    once (about 40% fewer draws, and rendering is most of a clip's generation time).
    """
    drawn: dict[tuple[SceneObject, ...], np.ndarray] = {}
    frames = []
    for t in range(clip.frames):
        scene = clip.scene_at(t)
        if scene.objects not in drawn:
            drawn[scene.objects] = np.asarray(render_scene(scene, size, noise_seed))
        frames.append(drawn[scene.objects])
    return np.stack(frames)
