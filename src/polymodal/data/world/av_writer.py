"""Write the audio-visual world: MP4 clips, WAV soundtracks and JSONL texts that the ``jsonl`` format reads.

Layout of ``out``::

    videos/<id>.mp4         the clip (``frames`` frames, ``size`` x ``size``, 8 fps)
    audio/<id>.wav          its soundtrack (16 kHz mono, one tone per event)
    audio/<id>_dub.wav      two-event clips only: the dubbed soundtrack of the statement task
    train.jsonl, val.jsonl, test.jsonl   one row per text (captions, questions, statements)
    clips.jsonl             the event log: every clip's objects, events and voices (ground truth)
    data.yaml               a ``data:`` spec (train/val/test, ``jsonl`` format) for run configs and eval
    av_world.json           the manifest: config, counts, file names

Statement verification ("the object that moved left made the low sound", label 1/0) needs the video,
the audio *and* the text, and every unimodal or bimodal shortcut is at chance by construction. Only
two-event clips get statements; they always have one large and one small event object, so one low
and one high sound (``motion.py``). Each of the two events in turn is the *subject*, named by what
only the video shows (its colour, its direction of motion, or "the object that appeared"; never its
shape or size, which the sound encodes as timbre and pitch), and gets four rows:

    real soundtrack + "SUBJECT made the <its register> sound"     -> 1
    real soundtrack + "SUBJECT made the <other register> sound"   -> 0
    dubbed track    + "SUBJECT made the <its register> sound"     -> 0
    dubbed track    + "SUBJECT made the <other register> sound"   -> 1

The dubbed track swaps the two voices' pitch and loudness (``sound.dub``): it is what the clip would
sound like with the two objects' sizes exchanged, so it is distributed exactly like a real track. Hence:

* text only: every statement string occurs once true and once false -> chance;
* video (+ text): each (video, text) pair occurs once with each label -> chance;
* audio (+ text): every track holds exactly one low and one high sound, dubbed and real tracks are
  equally likely, the text names neither the subject's timbre nor its timing, and for each track and
  named register one subject makes the statement true and the other false -> chance;
* video + audio without text: each (video, track) pair has two true and two false rows -> chance.

Only binding the subject (seen in the video) to its sound (heard at the subject's onset) and reading
the register named in the text decides the label.

Each clip is built from its own seed ``(seed, clip_id)`` in a worker process, so the output does not
depend on the number of workers. Media are written atomically (temporary name, then rename) and are
reused on a rerun with the same seed, frames and size, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from polymodal.atomic import write_text
from polymodal.data.world.lexicon import TRAIN_LEXICON, noun_phrase, number_word, with_article
from polymodal.data.world.motion import Clip, render_clip, sample_clip
from polymodal.data.world.sound import SAMPLE_RATE, Voice, dub, sound_phrase, synthesize, voices
from polymodal.data.world.stale import remove_stale_media
from polymodal.data.world.writer import _write_json, _write_jsonl
from polymodal.errors import ConfigError

SPLITS = ("train", "val", "test")
FPS = 8
FAMILIES: tuple[str, ...] = (
    "motion_what",
    "sound_source",
    "appearance",
    "motion_count",
    "sound_count",
    "direction",
)
QUESTIONS_PER_FAMILY = 2
VAL_FRACTION = TEST_FRACTION = 0.1
_MEDIA_KEYS = ("seed", "frames", "size", "fps")  # what the media files depend on (not the clip count)


@dataclass
class AVWorldSummary:
    """What ``write_av_world`` wrote, with a one-screen description for the CLI."""

    root: Path
    clips: int
    seed: int
    frames: int
    size: int
    fps: int = FPS
    counts: dict[str, int] = field(default_factory=dict)
    reused: int = 0  # clips whose media were already on disk (resumed run)
    seconds: float = 0.0
    stale_removed: int = 0  # media files of an earlier, larger world in the same folder, deleted

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        c = self.counts
        fam = ", ".join(f"{f} {c.get('family_' + f, 0)}" for f in FAMILIES)
        return "\n".join(
            [
                f"audio-visual world written to {self.root} in {self.seconds:.1f}s ({self.clips_per_s:.0f} clips/s"
                + (f", {self.reused} clips reused" if self.reused else "")
                + (f", {self.stale_removed} media files of an earlier world removed" if self.stale_removed else "")
                + ")",
                (
                    f"  clips:      train {c['clips_train']}, val {c['clips_val']}, test {c['clips_test']}"
                    f" ({self.frames} frames, {self.size}x{self.size} px, {self.fps} fps, {SAMPLE_RATE} Hz audio)"
                ),
                f"  rows:       train {c['rows_train']}, val {c['rows_val']}, test {c['rows_test']}",
                f"  captions:   {c['captions']}",
                f"  questions:  {c['questions']} ({fam})",
                f"  statements: {c['statements']} ({c['statements_true']} true)",
                f"  data spec:  {self.root / 'data.yaml'}",
            ]
        )


# --- texts ----------------------------------------------------------------------------------------
def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _object_phrase(clip: Clip, i: int, rng: np.random.Generator) -> str:
    """'small red cube' (colour and shape always; size and material sometimes)."""
    o = clip.objects[i]
    flt = {"color": o.color, "shape": o.shape}
    if rng.random() < 0.5:
        flt["size"] = o.size
    if rng.random() < 0.3:
        flt["material"] = o.material
    return noun_phrase(flt, TRAIN_LEXICON, rng)


def _verb_phrase(clip: Clip, k: int, rng: np.random.Generator) -> str:
    e = clip.events[k]
    if e.kind == "slide":
        return f"{_pick(rng, ('slides', 'moves', 'glides'))} {e.direction}"
    return _pick(rng, ("appears", "comes into view"))


def captions(clip: Clip, vs: list[Voice], rng: np.random.Generator) -> list[str]:
    """One caption per event, then one for the whole clip (events in onset order)."""
    out = [
        f"the {_object_phrase(clip, e.obj, rng)} {_verb_phrase(clip, k, rng)} with {sound_phrase(vs[k])}."
        for k, e in enumerate(clip.events)
    ]
    parts = [
        f"{with_article(_object_phrase(clip, e.obj, rng))} {_verb_phrase(clip, k, rng)} with {sound_phrase(vs[k])}"
        for k, e in enumerate(clip.events)
    ]
    if len(parts) == 2:
        out.append(f"first {parts[0]}, then {parts[1]}.")
    else:
        still = len(clip.objects) - 1
        rest = "object stays" if still == 1 else "objects stay"
        out.append(f"{parts[0]} while {number_word(still)} other {rest} still.")
    return out


@dataclass(frozen=True)
class AVQuestion:
    text: str
    answer: str
    family: str
    program: dict[str, Any]


def _slides(clip: Clip) -> list[int]:
    return [k for k, e in enumerate(clip.events) if e.kind == "slide"]


def question_candidates(clip: Clip, vs: list[Voice], rng: np.random.Generator) -> dict[str, list[AVQuestion]]:
    """Every well-posed question of every family (one-word answers); the writer samples from these."""
    objs = clip.objects
    fams: dict[str, list[AVQuestion]] = {f: [] for f in FAMILIES}
    slides = _slides(clip)
    for d in ("left", "right", "up", "down"):
        movers = [k for k in slides if clip.events[k].direction == d]
        if len(movers) != 1:
            continue  # "what moved left?" only when exactly one thing did
        o = objs[clip.events[movers[0]].obj]
        for text, attr in (
            (f"what moved {d}?", "shape"),
            (f"what shape moved {d}?", "shape"),
            (f"what color is the object that moved {d}?", "color"),
            (f"which color slid {d}?", "color"),
        ):
            program = {"op": "moved_attr", "direction": d, "attr": attr}
            fams["motion_what"].append(AVQuestion(text, o.attr(attr), "motion_what", program))
    for reg in ("low", "high"):
        makers = [v for v in vs if v.register == reg]
        if len(makers) != 1:
            continue
        o = objs[clip.events[makers[0].event].obj]
        for text, attr in (
            (f"which shape made the {reg} sound?", "shape"),
            (f"what made the {reg} sound?", "shape"),
            (f"what color is the object that made the {reg} sound?", "color"),
        ):
            program = {"op": "sound_attr", "register": reg, "attr": attr}
            fams["sound_source"].append(AVQuestion(text, o.attr(attr), "sound_source", program))
    appeared = {e.obj for e in clip.events if e.kind == "appear"}
    fams["appearance"].append(
        AVQuestion("did anything appear?", "yes" if appeared else "no", "appearance", {"op": "appeared_any"})
    )
    for i, o in enumerate(objs):
        fams["appearance"].append(
            AVQuestion(
                f"did the {o.color} {o.shape} appear?",
                "yes" if i in appeared else "no",
                "appearance",
                {"op": "appeared", "color": o.color},
            )
        )
    for text in ("how many objects moved?", "how many things slid?"):
        fams["motion_count"].append(AVQuestion(text, str(len(slides)), "motion_count", {"op": "count_moved"}))
    for text in ("how many sounds were there?", "how many sounds did you hear?"):
        fams["sound_count"].append(AVQuestion(text, str(len(vs)), "sound_count", {"op": "count_sounds"}))
    for k in slides:
        o = objs[clip.events[k].obj]
        program = {"op": "direction_of", "color": o.color}
        for text in (f"what direction did the {o.color} {o.shape} move?", f"which way did the {o.color} {o.shape} slide?"):
            fams["direction"].append(AVQuestion(text, clip.events[k].direction or "", "direction", dict(program)))
    return fams


def questions(clip: Clip, vs: list[Voice], rng: np.random.Generator) -> list[AVQuestion]:
    out: list[AVQuestion] = []
    for cands in question_candidates(clip, vs, rng).values():
        if cands:
            picks = rng.choice(len(cands), size=min(QUESTIONS_PER_FAMILY, len(cands)), replace=False)
            out.extend(cands[int(i)] for i in sorted(picks))
    return out


def _subject(clip: Clip, k: int, rng: np.random.Generator) -> tuple[str, dict[str, Any]]:
    """Name event ``k``'s object by what only the video shows (never shape or size: the sound has those)."""
    e = clip.events[k]
    same_kind = [j for j, f in enumerate(clip.events) if f.kind == e.kind and f.direction == e.direction]
    if len(same_kind) == 1 and rng.random() < 0.6:
        if e.kind == "slide":
            return f"the object that moved {e.direction}", {"by": "direction", "direction": e.direction}
        return "the object that appeared", {"by": "appeared"}
    color = clip.objects[e.obj].color
    return f"the {color} object", {"by": "color", "color": color}


def statements(clip: Clip, rng: np.random.Generator) -> list[tuple[str, str, int, dict[str, Any]]]:
    """Eight (text, track, label, program) rows for a two-event clip (see the module docstring); else none.

    Both events are subjects (four rows each), so for every track and every named register exactly one
    of the two subjects makes the statement true: nothing the soundtrack holds predicts the label
    without knowing, from the video, which event the subject is. ``track`` is "real" or "dub"; the
    label is 1 when the subject's voice in that track has the named register.
    """
    if len(clip.events) != 2:
        return []
    template = _pick(rng, ("{s} made the {r} sound.", "the {r} sound came from {s}."))
    rows = []
    for k in range(2):
        subject, ref = _subject(clip, k, rng)
        own = "low" if clip.objects[clip.events[k].obj].size == "large" else "high"
        other = "high" if own == "low" else "low"
        for track in ("real", "dub"):
            for reg in (own, other):
                label = int((reg == own) == (track == "real"))
                program = {"op": "made_sound", "subject": ref, "register": reg, "track": track}
                rows.append((template.format(s=subject, r=reg), track, label, program))
    return [rows[int(i)] for i in rng.permutation(len(rows))]


# --- media and rows of one clip -------------------------------------------------------------------
def _atomic_wav(path: Path, audio: np.ndarray) -> None:
    import soundfile as sf

    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        sf.write(str(tmp), audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


_STATE: dict[str, Any] = {}


def _init_worker(root: str, seed: int, frames: int, size: int, reuse: bool) -> None:
    _STATE.update(root=Path(root), seed=seed, frames=frames, size=size, reuse=reuse)


def clip_name(clip_id: int) -> str:
    return f"{clip_id:06d}"


def _build(job: tuple[int, str]) -> dict[str, Any]:
    """Everything about one clip: its media on disk and its rows, from its own seed."""
    from polymodal.data.video import write_video

    clip_id, split = job
    root: Path = _STATE["root"]
    seed: int = _STATE["seed"]
    clip = sample_clip(seed, clip_id, frames=_STATE["frames"], fps=FPS)
    vs = voices(clip, seed)
    seeds = np.random.default_rng([seed, clip_id, 17]).integers(2**31, size=2)
    name = clip_name(clip_id)
    video_rel, audio_rel, dub_rel = f"videos/{name}.mp4", f"audio/{name}.wav", f"audio/{name}_dub.wav"
    wanted = [video_rel, audio_rel] + ([dub_rel] if len(vs) == 2 else [])
    reused = _STATE["reuse"] and all((root / p).is_file() for p in wanted)
    if not reused:
        write_video(root / video_rel, render_clip(clip, _STATE["size"], noise_seed=int(seeds[0])), fps=FPS)
        _atomic_wav(root / audio_rel, synthesize(vs, clip.duration_s, noise_seed=int(seeds[1])))
        if len(vs) == 2:
            _atomic_wav(root / dub_rel, synthesize(dub(vs), clip.duration_s, noise_seed=int(seeds[1])))

    rng = np.random.default_rng([seed, clip_id, 23])
    base = {"video": video_rel, "image_id": f"clip_{name}", "clip_id": clip_id, "split": split}
    rows: list[dict[str, Any]] = []
    for text in captions(clip, vs, rng):
        rows.append(base | {"audio": audio_rel, "text": text, "kind": "caption"})
    for q in questions(clip, vs, rng):
        question = {"text": q.text, "answers": [q.answer], "kind": "question", "family": q.family, "program": q.program}
        rows.append(base | {"audio": audio_rel} | question)
    for text, track, label, program in statements(clip, rng):
        audio = audio_rel if track == "real" else dub_rel
        statement = {"text": text, "label": label, "kind": "statement", "family": "statement", "program": program}
        rows.append(base | {"audio": audio} | statement)
    for k, row in enumerate(rows):
        row["id"] = f"{name}_{k:02d}"
    log = clip.to_json() | {
        "split": split,
        "video": video_rel,
        "audio": audio_rel,
        "dub": dub_rel if len(vs) == 2 else None,
        "voices": [v.__dict__ for v in vs],
    }
    return {"clip_id": clip_id, "split": split, "rows": rows, "log": log, "reused": reused}


# --- the whole world ------------------------------------------------------------------------------
def _split_of(clips: int, seed: int) -> dict[int, str]:
    order = np.random.default_rng([seed, 1]).permutation(clips)
    n_test = max(1, round(clips * TEST_FRACTION))
    n_val = max(1, round(clips * VAL_FRACTION))
    out = {int(i): "test" for i in order[:n_test]}
    out |= {int(i): "val" for i in order[n_test : n_test + n_val]}
    out |= {int(i): "train" for i in order[n_test + n_val :]}
    return out


def data_spec() -> dict[str, Any]:
    """The ``data:`` section (relative paths, anchored at ``data.yaml``'s folder when it is read)."""
    fields = {"root": ".", "id_field": "id", "image_field": None, "text_field": "text", "label_field": "label",
              "answers_field": "answers", "audio_field": "audio", "video_field": "video"}  # fmt: skip
    return {"data": {s: [{"format": "jsonl", "path": f"{s}.jsonl", **fields}] for s in SPLITS}}


def write_av_world(
    out: str | Path,
    clips: int,
    seed: int,
    frames: int = 8,
    size: int = 64,
    progress: bool = True,
    workers: int | None = None,
) -> AVWorldSummary:
    """Generate ``clips`` audio-visual clips with their texts into ``out`` (see the module docstring)."""
    if clips < 3:
        raise ConfigError(f"av world: clips must be >= 3 (one per split), got {clips}")
    if frames < 6:
        raise ConfigError(f"av world: frames must be >= 6 (a slide and two separated sounds), got {frames}")
    if size < 32 or size % 2:
        raise ConfigError(
            f"av world: size must be an even number >= 32 (MP4 stores colour per 2x2 block), got {size}"
        )
    from polymodal.data.video import _import_av

    # import PyAV (and torch, via polymodal.data.video) here, once: forked workers inherit the modules
    # instead of each importing them, and a missing PyAV fails before anything is written
    _import_av()
    t0 = time.perf_counter()
    root = Path(out).resolve()
    for sub in ("videos", "audio"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    media = {"seed": seed, "frames": frames, "size": size, "fps": FPS}
    manifest_path = root / "av_world.json"
    reuse = False
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8")).get("media", {})
            reuse = all(old.get(k) == media[k] for k in _MEDIA_KEYS)
        except (json.JSONDecodeError, AttributeError):
            reuse = False
    # written first, so that an interrupted run is recognised (and its media reused) by the next one
    _write_json(manifest_path, {"name": "polymodal-av-world", "version": 1, "media": media, "complete": False})

    split_of = _split_of(clips, seed)
    jobs = [(i, split_of[i]) for i in range(clips)]
    n_workers = workers or os.cpu_count() or 1
    bar = tqdm(total=clips, desc="av world", unit="clip", disable=not progress)
    results: list[dict[str, Any]] = []
    init_args = (str(root), seed, frames, size, reuse)
    if n_workers == 1 or clips < 32:
        _init_worker(*init_args)
        for r in map(_build, jobs):
            results.append(r)
            bar.update()
    else:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(n_workers, initializer=_init_worker, initargs=init_args) as pool:
            for r in pool.imap(_build, jobs, chunksize=8):
                results.append(r)
                bar.update()
    bar.close()
    written = {Path(r["log"][key]).name for r in results for key in ("video", "audio", "dub") if r["log"][key]}
    stale = remove_stale_media(root / "videos", r"\d{6}\.mp4", written)
    stale += remove_stale_media(root / "audio", r"\d{6}(_dub)?\.wav", written)

    counts: Counter = Counter()
    for split in SPLITS:
        recs = [r for r in results if r["split"] == split]
        rows = [row for r in recs for row in r["rows"]]
        _write_jsonl(root / f"{split}.jsonl", rows)
        counts[f"clips_{split}"] = len(recs)
        counts[f"rows_{split}"] = len(rows)
        for row in rows:
            kind = row["kind"]
            counts[kind + "s"] += 1
            if kind == "question":
                counts["family_" + row["family"]] += 1
            elif kind == "statement":
                counts["statements_true"] += row["label"]
    _write_jsonl(root / "clips.jsonl", [r["log"] for r in results])
    spec_text = "# written by polymodal data av-world\n" + yaml.safe_dump(data_spec(), sort_keys=False)
    write_text(root / "data.yaml", spec_text)
    summary = AVWorldSummary(
        root=root, clips=clips, seed=seed, frames=frames, size=size, counts=dict(counts),
        reused=sum(r["reused"] for r in results), seconds=time.perf_counter() - t0, stale_removed=stale,
    )  # fmt: skip
    _write_json(
        manifest_path,
        {
            "name": "polymodal-av-world",
            "version": 1,
            "media": media,
            "complete": True,
            "clips": clips,
            "sample_rate": SAMPLE_RATE,
            "families": list(FAMILIES),
            "counts": summary.counts,
            "files": {"splits": {s: f"{s}.jsonl" for s in SPLITS}, "clips": "clips.jsonl", "data_spec": "data.yaml"},
        },
    )
    return summary
