"""``polymodal export --onnx``: a native dual encoder's towers, run by onnxruntime, give PyTorch's embeddings.

One tiny checkpoint is exported once per module (the default torch.export-based exporter); tests that are
about the check or the folder handling use the faster TorchScript exporter.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from polymodal import export as E
from polymodal.api import load_model
from polymodal.data.processors import ImageProcessor, ImageProcessorConfig
from polymodal.data.tokenizers import train_tokenizer
from polymodal.errors import ConfigError, PolymodalError
from polymodal.models.factory import BuildContext, build_model
from polymodal.modules.encoders.hf import MissingDependencyError
from polymodal.train.checkpoint import save_checkpoint
from tests.cli_runner import run_cli

VIT = {"name": "vit", "image_size": 32, "patch_size": 8, "width": 32, "depth": 1, "heads": 2}
TEXT = {"name": "text_transformer", "max_length": 16, "width": 32, "depth": 1, "heads": 2, "causal": True}
DUAL = {"type": "dual_encoder", "vision": VIT, "text": TEXT, "embed_dim": 24}
CORPUS = ["a red cube left of a blue sphere", "two green cones", "a small yellow cylinder behind a large purple cube", "the photo of a cat"]
TEXTS5 = ["a red cube", "two green cones behind a blue sphere on the left", "cube", "a purple cylinder", "the yellow cat is small"]


def _images(n: int, seed: int = 7) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(40, 30), (32, 32), (50, 64), (33, 45), (80, 40)]
    return [Image.fromarray(rng.integers(0, 256, (sizes[i % 5][1], sizes[i % 5][0], 3), dtype=np.uint8)) for i in range(n)]


def _save(run: Path, config: dict, tokenizer=None, **processors) -> Path:
    torch.manual_seed(0)
    model = build_model(config, BuildContext(tokenizer=tokenizer))
    procs = {"image": ImageProcessor(ImageProcessorConfig(size=32)).to_dict(), "text_max_length": 16, **processors}
    save_checkpoint(run, model=model, model_config=config, global_step=1, processors=procs, tokenizer=tokenizer)
    return run


@pytest.fixture(scope="module")
def native_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = train_tokenizer(CORPUS, vocab_size=80)
    return _save(tmp_path_factory.mktemp("native") / "run", DUAL, tok, task="retrieval")


@pytest.fixture(scope="module")
def exported(native_run: Path) -> E.ExportResult:
    return E.export_onnx(native_run, native_run.parent / "onnx")


def _sessions(folder: Path) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    return tuple(ort.InferenceSession(str(folder / n), providers=["CPUExecutionProvider"]) for n in (E.IMAGE_FILE, E.TEXT_FILE))  # type: ignore[return-value]


def test_onnx_towers_match_pytorch_at_batch_sizes_other_than_the_traced_one(native_run: Path, exported: E.ExportResult) -> None:
    model, proc = load_model(native_run)
    image_s, text_s = _sessions(exported.out_dir)
    assert [(i.name, i.shape) for i in image_s.get_inputs()] == [("pixel_values", ["batch", 3, 32, 32])]
    assert [(o.name, o.shape) for o in image_s.get_outputs()] == [("image_embeds", ["batch", 24])]
    assert [(i.name, i.shape, i.type) for i in text_s.get_inputs()] == [
        ("input_ids", ["batch", "sequence"], "tensor(int64)"), ("attention_mask", ["batch", "sequence"], "tensor(int64)")
    ]
    assert [o.name for o in text_s.get_outputs()] == ["text_embeds"]
    lengths = set()
    for b in (1, 5):
        px = proc.images(_images(b))
        ids, mask = proc.texts(TEXTS5[:b])
        lengths.add(ids.shape[1])
        with torch.no_grad():
            want_img, want_txt = model.encode_image(px).numpy(), model.encode_text(ids, mask).numpy()
        got_img = image_s.run(None, {"pixel_values": px.numpy()})[0]
        got_txt = text_s.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        assert got_img.shape == (b, 24) and got_txt.shape == (b, 24)
        np.testing.assert_allclose(got_img, want_img, atol=1e-4, rtol=0)
        np.testing.assert_allclose(got_txt, want_txt, atol=1e-4, rtol=0)
        if b == 5:
            assert mask.min() == 0  # padding is exercised: the texts have different lengths
    assert len(lengths) == 2  # and the sequence length differs between the batches
    # the export measured its own differences, below the tolerance, for both files
    assert set(exported.max_abs_diff) == {E.IMAGE_FILE, E.TEXT_FILE}
    assert all(0 <= d <= 1e-4 for d in exported.max_abs_diff.values())
    assert exported.exporter == "dynamo" and exported.opset >= 18
    assert exported.embed_dim == 24 and exported.image_shape == (3, 32, 32)


def test_the_folder_is_usable_without_polymodal(native_run: Path, exported: E.ExportResult) -> None:
    """tokenizer.json + export.json + numpy are enough to reproduce polymodal's embeddings."""
    from tokenizers import Tokenizer

    folder = exported.out_dir
    assert sorted(p.name for p in folder.iterdir()) == sorted([E.IMAGE_FILE, E.TEXT_FILE, E.MANIFEST_FILE, "tokenizer.json"])
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    manifest = json.loads((folder / E.MANIFEST_FILE).read_text())
    model, proc = load_model(native_run)
    assert manifest["model_type"] == "dual_encoder" and manifest["family"] == "polymodal"
    assert manifest["embed_dim"] == 24 and manifest["image_size"] == [32, 32]
    assert manifest["logit_scale"] == pytest.approx(float(model.logit_scale))
    assert manifest["image_processor"] == json.loads(json.dumps(proc.image.to_dict()))
    assert manifest["text"]["max_length"] == 16 and manifest["text"]["tokenizer_files"] == ["tokenizer.json"]
    assert manifest["image_encoder"]["inputs"] == [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    assert manifest["text_encoder"]["outputs"] == [{"name": "text_embeds", "dtype": "float32", "shape": ["batch", 24]}]
    assert manifest["check"]["max_abs_diff"] == pytest.approx(exported.max_abs_diff)

    # text: the saved tokenizer, padded by hand as the manifest says
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    encs = [tok.encode(t).ids[: manifest["text"]["max_length"]] for t in TEXTS5[:3]]
    length = max(map(len, encs))
    ids = np.full((3, length), manifest["text"]["pad_id"], dtype=np.int64)
    mask = np.zeros((3, length), dtype=np.int64)
    for i, e in enumerate(encs):
        ids[i, : len(e)], mask[i, : len(e)] = e, 1
    want_ids, want_mask = proc.texts(TEXTS5[:3])
    assert np.array_equal(ids, want_ids.numpy()) and np.array_equal(mask, want_mask.numpy())
    # image: a 32x32 image needs no resize, only the manifest's mean / std
    cfg = manifest["image_processor"]
    img = _images(2)[1]
    px = (np.asarray(img, dtype=np.float32) / 255.0 - np.array(cfg["mean"], dtype=np.float32)) / np.array(cfg["std"], dtype=np.float32)
    px = px.transpose(2, 0, 1)[None]
    np.testing.assert_allclose(px, proc.images([img]).numpy(), atol=1e-5)

    image_s, text_s = _sessions(folder)
    img_emb = image_s.run(None, {"pixel_values": px})[0]
    txt_emb = text_s.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    with torch.no_grad():
        want = (model.logit_scale * model.encode_image(proc.images([img])) @ model.encode_text(want_ids, want_mask).t()).numpy()
    np.testing.assert_allclose(manifest["logit_scale"] * img_emb @ txt_emb.T, want, atol=1e-3)
    assert np.allclose(np.linalg.norm(txt_emb, axis=1), 1.0, atol=1e-5)


def test_cli_exports_replaces_only_with_overwrite_and_prints_the_differences(
    native_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli_onnx"
    out.mkdir()
    (out / "keep.txt").write_text("not mine")
    code, stdout, err = run_cli(capsys, "export", "--onnx", str(native_run), "--out", str(out))
    assert code == 2 and "not empty" in err and "--overwrite" in err and "Traceback" not in err
    assert (out / "keep.txt").read_text() == "not mine" and not (out / E.IMAGE_FILE).exists()
    # --overwrite replaced its folder whole: a folder holding the exported run (or the one we work in) is refused
    for target in (native_run, native_run.parent, Path(".")):
        code, _, err = run_cli(capsys, "export", "--onnx", str(native_run / "checkpoints"), "--out", str(target), "--overwrite")
        assert code == 2 and f"--out {target} is or contains" in err and "Traceback" not in err, err
    assert (native_run / "checkpoints").is_dir()

    code, stdout, err = run_cli(capsys, "export", "--onnx", str(native_run), "--out", str(out), "--overwrite", "--exporter", "torchscript", "--opset", "17")
    assert code == 0, err
    assert not (out / "keep.txt").exists()
    assert {E.IMAGE_FILE, E.TEXT_FILE, E.MANIFEST_FILE, "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert "torchscript exporter, opset 17" in stdout and "image_encoder.onnx" in stdout and "max |onnx - torch|" in stdout
    manifest = json.loads((out / E.MANIFEST_FILE).read_text())
    for name, diff in manifest["check"]["max_abs_diff"].items():
        assert f"{name} {diff:.2e}" in stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "export", "--help")
    assert code == 0 and "Example" in out and "--onnx" in out and "--no-check" in out and "--overwrite" in out


def test_a_model_that_is_not_a_dual_encoder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {"type": "classifier", "encoders": {"image": VIT}, "fusion_dim": 16}
    run = _save(tmp_path / "cls", config, task="classification", task_state={"classes": ["no", "yes"]})
    with pytest.raises(E.ExportError, match=r"holds a 'classifier' model; ONNX export covers dual encoders \(image and text towers\)"):
        E.export_onnx(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    code, _, err = run_cli(capsys, "export", "--onnx", str(run), "--out", str(tmp_path / "out"))
    assert code == 2 and "'classifier' model" in err and "Traceback" not in err


def test_a_tampered_graph_fails_the_check_naming_the_file_and_the_difference(native_run: Path, exported: E.ExportResult, tmp_path: Path) -> None:
    folder = tmp_path / "tampered"
    shutil.copytree(exported.out_dir, folder)
    model, proc = load_model(native_run)
    assert E.check_onnx_export(folder, model, proc).keys() == {E.IMAGE_FILE, E.TEXT_FILE}  # intact: passes
    proto = onnx.load(str(folder / E.TEXT_FILE))
    biggest = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)) if t.data_type == onnx.TensorProto.FLOAT else 0)
    arr = onnx.numpy_helper.to_array(biggest)
    noise = np.random.default_rng(0).normal(0, 0.5, arr.shape)  # random: a constant shift could vanish in a LayerNorm
    biggest.CopyFrom(onnx.numpy_helper.from_array((arr + noise).astype(np.float32), biggest.name))
    onnx.save(proto, str(folder / E.TEXT_FILE))
    with pytest.raises(E.OnnxCheckError, match=r"text_encoder\.onnx: onnxruntime's outputs differ from PyTorch's by up to [0-9.e-]+") as info:
        E.check_onnx_export(folder, model, proc)
    assert "image_encoder.onnx" not in str(info.value)  # only the tampered file is named


def test_a_failed_check_writes_nothing(native_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = E._run_onnx

    def off_by_a_little(session, feeds):
        out = real(session, feeds)
        return out + 1e-3 if "pixel_values" in feeds else out

    monkeypatch.setattr(E, "_run_onnx", off_by_a_little)
    out = tmp_path / "out"
    with pytest.raises(E.OnnxCheckError, match=r"image_encoder\.onnx: .*differ .* by up to 0\.001 .*tolerance 0\.0001") as info:
        E.export_onnx(native_run, out, exporter="torchscript")
    assert "text_encoder.onnx" not in str(info.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # a looser tolerance accepts it, and says how far off it was
    result = E.export_onnx(native_run, out, exporter="torchscript", atol=1e-2)
    assert result.max_abs_diff[E.IMAGE_FILE] == pytest.approx(1e-3, rel=1e-2)
    assert result.max_abs_diff[E.TEXT_FILE] < 1e-4


def test_older_opsets_use_the_torchscript_exporter_and_are_checked(native_run: Path, tmp_path: Path) -> None:
    result = E.export_onnx(native_run, tmp_path / "o17", opset=17)
    assert result.exporter == "torchscript" and result.opset == 17
    for name in (E.IMAGE_FILE, E.TEXT_FILE):
        assert [o.version for o in onnx.load(str(tmp_path / "o17" / name)).opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert all(d <= 1e-4 for d in result.max_abs_diff.values())
    assert json.loads(result.manifest.read_text())["exporter"] == "torchscript"
    with pytest.raises(ConfigError, match="opset 17.*18 and newer"):
        E.export_onnx(native_run, tmp_path / "x", opset=17, exporter="dynamo")
    with pytest.raises(ConfigError, match="opset must be an integer >= 14"):
        E.export_onnx(native_run, tmp_path / "x", opset=11)


def test_auto_falls_back_to_torchscript_when_torch_export_fails(native_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = E._export_tower

    def no_dynamo(*args, **kw):
        if args[-1] == "dynamo":
            raise RuntimeError("data-dependent control flow")
        return real(*args, **kw)

    monkeypatch.setattr(E, "_export_tower", no_dynamo)
    result = E.export_onnx(native_run, tmp_path / "fb", check=False)
    assert result.exporter == "torchscript" and not result.checked
    assert any("data-dependent control flow" in n for n in result.notes)
    assert json.loads(result.manifest.read_text())["check"] is None
    with pytest.raises(E.ExportError, match=r"image_encoder\.onnx of .* failed with the dynamo exporter: RuntimeError: data-dependent"):
        E.export_onnx(native_run, tmp_path / "fb2", exporter="dynamo")
    assert not (tmp_path / "fb2").exists()


def test_missing_onnx_packages_say_how_to_install_them(native_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"onnxruntime package .*pip install 'polymodal\[export\]'"):
        E.export_onnx(native_run, tmp_path / "x")
    assert isinstance(MissingDependencyError("x"), PolymodalError)
    assert not (tmp_path / "x").exists()
