"""Robustness corruptions and curves, ``polymodal eval --robustness`` and ``polymodal bench model``."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from polymodal.data.sample import Sample
from polymodal.data.tokenizers import train_tokenizer
from polymodal.models.configs import parse_model_config
from polymodal.models.factory import BuildContext, build_model
from polymodal.robustness import CORRUPTIONS, Target, applicable_targets, parse_levels, robustness_curves
from polymodal.tasks.classification import ClassificationTask
from tests.cli_runner import run_cli

WORDS = ["a", "red", "cube", "left", "of", "the", "blue", "sphere", "near", "small", "green", "cylinder"]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return train_tokenizer([" ".join(WORDS)] * 4, vocab_size=120)


def _batch(tokenizer: Any, b: int = 4) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(WORDS[i : i + 6]) for i in range(b)]
    enc = tokenizer.encode(texts, 32)
    return {
        "image": torch.randn(b, 3, 16, 16, generator=g),
        "video": torch.randn(b, 3, 3, 16, 16, generator=g),
        "audio": torch.randn(b, 8, 20, generator=g) - 4.0,
        "audio_features": torch.randn(b, 5, 6, generator=g) * 3 + 1,
        "text": texts,
        "text_ids": enc.input_ids,
        "text_mask": enc.attention_mask,
    }


TARGETS = {
    "image": Target("image", "image", "image"),
    "video": Target("video", "video", "video"),
    "audio": Target("audio", "audio", "audio"),
    "features": Target("audio", "audio_features", "features"),
    "text": Target("text", "text_ids", "text", max_length=32),
}


def _distance(clean: dict[str, Any], out: dict[str, Any], target: Target) -> float:
    if target.input == "text":
        a, b = " ".join(clean["text"]), " ".join(out["text"])
        return float(sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b)))
    return float((out[target.key] - clean[target.key]).norm())


@pytest.mark.parametrize(("input_type", "kind"), list(CORRUPTIONS))
def test_each_corruption_is_identity_at_0_grows_with_level_and_is_seeded(tokenizer: Any, input_type: str, kind: str) -> None:
    fn, target = CORRUPTIONS[(input_type, kind)], Target(**{**TARGETS[input_type].__dict__, "tokenizer": tokenizer})
    clean = _batch(tokenizer, 8)
    same = fn(clean, 0.0, torch.Generator().manual_seed(3), target)
    assert _distance(clean, same, target) == 0 and same.get(target.present_key) is None
    distances = [_distance(clean, fn(clean, lv, torch.Generator().manual_seed(3), target), target) for lv in (0.0, 0.3, 0.6, 1.0)]
    assert distances[-1] > 0
    assert all(b >= a for a, b in itertools.pairwise(distances)), distances
    again = fn(clean, 0.6, torch.Generator().manual_seed(3), target)
    first = fn(clean, 0.6, torch.Generator().manual_seed(3), target)
    assert _distance(first, again, target) == 0
    assert torch.equal(clean["image"], _batch(tokenizer, 8)["image"])  # the input batch is never modified


@pytest.mark.parametrize("kind", ["word_dropout", "typos"])
def test_text_corruptions_retokenise(tokenizer: Any, kind: str) -> None:
    clean = _batch(tokenizer)
    out = CORRUPTIONS[("text", kind)](clean, 1.0, torch.Generator().manual_seed(0), Target("text", "text_ids", "text", tokenizer, 32))
    enc = tokenizer.encode(out["text"], 32)
    assert out["text"] != clean["text"] and torch.equal(out["text_ids"], enc.input_ids) and torch.equal(out["text_mask"], enc.attention_mask)
    if kind == "word_dropout":
        assert out["text"] == [""] * len(clean["text"])


@pytest.mark.parametrize("input_type", ["image", "audio", "features", "text"])
def test_drop_zeroes_the_input_and_marks_it_absent(tokenizer: Any, input_type: str) -> None:
    target = Target(**{**TARGETS[input_type].__dict__, "tokenizer": tokenizer})
    out = CORRUPTIONS[(input_type, "drop")](_batch(tokenizer), 1.0, torch.Generator().manual_seed(0), target)
    assert not out[target.present_key].any()
    if input_type == "text":
        assert out["text"] == [""] * 4
    else:
        assert not out[target.key].any()


def test_levels_parse_and_reject_bad_values() -> None:
    assert parse_levels("0.5,1") == (0.0, 0.5, 1.0)
    with pytest.raises(Exception, match="--robustness-levels"):
        parse_levels("0,2")


# ------------------------------------------------------------------------------------------ curves


def _classifier(tokenizer: Any) -> torch.nn.Module:
    cfg = parse_model_config({
        "type": "classifier", "num_outputs": 2, "fusion_dim": 16,
        "encoders": {"image": {"name": "cnn", "image_size": 16, "channels": [4, 8], "width": 16},
                     "text": {"name": "text_transformer", "max_length": 32, "width": 16, "depth": 1, "heads": 2, "causal": False}},
    })
    torch.manual_seed(0)
    return build_model(cfg, BuildContext(tokenizer=tokenizer)).eval()


def test_curves_on_a_tiny_classifier(tokenizer: Any) -> None:
    samples = [Sample(sample_id=str(i), text=" ".join(WORDS[i % 5 : i % 5 + 5]), label=str(i % 2)) for i in range(12)]
    pixels = torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(1))

    def loader(items: list[Sample], with_images: bool = True) -> list[dict[str, Any]]:
        out = []
        for start in range(0, len(items), 5):
            chunk = items[start : start + 5]
            enc = tokenizer.encode([s.text for s in chunk], 32)
            out.append({"samples": chunk, "image": pixels[[int(s.sample_id) for s in chunk]], "text": [s.text for s in chunk],
                        "text_ids": enc.input_ids, "text_mask": enc.attention_mask})
        return out

    task = ClassificationTask()
    task.classes = ["0", "1"]
    model = _classifier(tokenizer)
    clean = task.evaluate(model, samples, loader, torch.device("cpu")).metrics
    result = robustness_curves(task, model, samples, loader, torch.device("cpu"), levels=(0, 0.5, 1), tokenizer=tokenizer)
    assert result["headline"] == "accuracy" and result["levels"] == [0.0, 0.5, 1.0]
    assert set(result["curves"]) == {"image", "text"}
    assert set(result["curves"]["image"]) == {"noise", "blur", "occlusion", "drop"}
    assert set(result["curves"]["text"]) == {"word_dropout", "typos", "drop"}
    for kinds in result["curves"].values():
        for curve in kinds.values():
            assert curve["headline"][0] == clean["accuracy"] and len(curve["metrics"]) == 3
            assert set(curve["metrics"][1]) == set(clean)
    only = robustness_curves(task, model, samples, loader, torch.device("cpu"), modalities=["image"], kinds=["blur"], levels=(0, 1))
    assert list(only["curves"]) == ["image"] and list(only["curves"]["image"]) == ["blur"]
    with pytest.raises(Exception, match="no modality 'audio'"):
        robustness_curves(task, model, samples, loader, torch.device("cpu"), modalities=["audio"])


def test_captioning_skips_text_and_says_so() -> None:
    from polymodal.tasks.captioning import CaptioningTask

    targets, skipped = applicable_targets(CaptioningTask(None), torch.nn.Linear(1, 1))
    assert [t.modality for t in targets] == ["image"] and "text" in skipped


def test_a_video_or_audio_tower_in_the_images_place_gets_that_modalitys_corruptions() -> None:
    """Video QA and audio-text retrieval read a clip or a sound under the batch key ``image``: the curves
    are named for what the tower reads, with that modality's corruptions (no blur for a sound)."""
    from polymodal.models.dual_encoder import DualEncoder
    from polymodal.modules.encoders import build_encoder
    from polymodal.robustness import kinds_for
    from polymodal.tasks.retrieval import RetrievalTask
    from polymodal.tasks.vqa import VQATask

    text = build_encoder("text_transformer", vocab_size=20, max_length=8, width=16, depth=1, heads=2, causal=True)
    towers = {
        "video": build_encoder("video", frame_encoder={"name": "cnn", "image_size": 16, "channels": [4, 8], "width": 16}),
        "audio": build_encoder("audio", n_mels=8, width=16, depth=1, heads=2),
        "image": build_encoder("cnn", image_size=16, channels=[4, 8], width=16),
    }
    for modality, tower in towers.items():
        model = DualEncoder(tower, text, embed_dim=8)
        for task in (RetrievalTask(None, 8), VQATask()):
            targets, _ = applicable_targets(task, model)
            assert (targets[0].modality, targets[0].key, targets[0].input) == (modality, "image", modality)
    assert "blur" in kinds_for("video") and kinds_for("audio") == ["noise", "drop"]


# ------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from polymodal.data.world import WorldConfig, generate_world
    from tests.test_api import _train

    root = tmp_path_factory.mktemp("robust_run")
    world = root / "world"
    generate_world(world, WorldConfig(num_scenes=30, seed=2, image_size=32), workers=1)
    run, _, _ = _train(root, world, "classification")
    return run, world


def test_cli_eval_robustness_writes_curves_and_plots(classification_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, world = classification_run
    code, out, err = run_cli(
        capsys, "eval", "--checkpoint", str(run), "--data", str(world), "--split", "test", "--out", str(tmp_path),
        "--workers", "0", "--device", "cpu", "--max-samples", "16", "--robustness", "--robustness-levels", "0,1",
    )
    assert code == 0, err
    saved = json.loads((tmp_path / "eval.json").read_text())
    curves = saved["robustness"]["test"]
    assert curves["levels"] == [0.0, 1.0] and set(curves["curves"]) == {"image", "text"}
    assert curves["curves"]["image"]["noise"]["headline"][0] == saved["metrics"]["test"]["accuracy"]
    html = (tmp_path / "report.html").read_text()
    assert 'id="robustness"' in html and "robustness of image" in html and "robustness of text" in html
    assert "## Robustness" in (tmp_path / "report.md").read_text()
    assert "robustness (test" in out


def test_cli_robustness_levels_need_robustness(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(tmp_path), "--data", str(tmp_path), "--robustness-levels", "0,1")
    assert code == 2 and "--robustness" in err


# ------------------------------------------------------------------------------------------ bench


def test_bench_model_json_for_tiny_and_sentiment_configs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from polymodal.models.factory import list_model_configs

    names = [n for n in list_model_configs() if n.endswith("-tiny") or n.startswith("sentiment-")]
    code, out, err = run_cli(capsys, "bench", "model", *names, "--batch", "2", "--repeats", "1", "--json", str(tmp_path / "cost.json"))
    assert code == 0, err
    rows = json.loads((tmp_path / "cost.json").read_text())
    assert [r["name"] for r in rows] == names
    for r in rows:
        assert r["params"] > 0 and r["flops_per_sample"] > 0 and r["peak_memory_bytes"] > 0 and r["latency_ms_per_sample"] > 0
    assert out.splitlines()[0].split()[:2] == ["model", "params"]


def test_peak_memory_grows_with_batch() -> None:
    from polymodal.models.cost import measure

    small, large = measure("sentiment-tfn", batch=1, repeats=1), measure("sentiment-tfn", batch=8, repeats=1)
    assert large.peak_memory_bytes > small.peak_memory_bytes > 0


def test_video_and_audio_encoders_get_dummy_inputs(tmp_path: Path) -> None:
    from polymodal.models.cost import measure

    path = tmp_path / "av.yaml"
    path.write_text(json.dumps({
        "type": "classifier", "num_outputs": 2, "fusion_dim": 16,
        "encoders": {"audio": {"name": "audio", "n_mels": 16, "width": 16, "depth": 1, "heads": 2},
                     "video": {"name": "video", "max_frames": 4, "frame_encoder": {"name": "cnn", "image_size": 16, "channels": [4, 8], "width": 16}}},
    }))
    cost = measure(str(path), batch=2, repeats=1)
    assert cost.flops_per_sample > 0 and cost.peak_memory_bytes > 0
