from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from polymodal.config import load_config, parse_source
from polymodal.data.sources import VqaV2Source
from polymodal.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_valid_config_resolves_paths_against_its_folder(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "seed: 3\ndata:\n  train:\n    - {format: vqa_v2, questions: q.json, annotations: a.json, images: imgs, image_template: '{split}_{image_id:06d}.png'}\n",
    )
    cfg = load_config(p)
    src = cfg.data.train[0]
    assert isinstance(src, VqaV2Source) and cfg.seed == 3
    assert src.questions == (tmp_path / "q.json").resolve() and src.images == (tmp_path / "imgs").resolve()


def test_unknown_key_is_named_with_the_file(tmp_path: Path) -> None:
    p = _write(tmp_path, "data:\n  train:\n    - {format: coco_captions, annotations: a.json, images: i, imagez: x}\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert str(p) in msg and "unknown key 'data.train[0].imagez'; did you mean 'images'?" in msg


def test_a_misspelt_key_gets_the_nearest_real_one_and_a_stray_one_none(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, "train: {task: vqa, epoch: 3}\nmodel: {type: vqa, vision: {name: vit}, text: {name: text_transformer}, fusion_dept: 1}\nzzz: 1\n"))
    msg = str(err.value)
    assert "unknown key 'train.epoch'; did you mean 'epochs'?" in msg
    assert "unknown key 'model.fusion_dept'; did you mean 'fusion_depth'?" in msg
    assert "unknown key 'zzz' (check the spelling" in msg


def test_unknown_top_level_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        load_config(_write(tmp_path, "trian: {}\n"))


def test_wrong_type_and_missing_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key 'seed'"):
        load_config(_write(tmp_path, "seed: many\n"))
    with pytest.raises(ConfigError, match="missing required key 'data.train\\[0\\].images'"):
        load_config(_write(tmp_path, "data:\n  train:\n    - {format: coco_captions, annotations: a.json}\n"))


def test_unknown_format_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="coco_captions"):
        load_config(_write(tmp_path, "data:\n  train:\n    - {format: cocoo, path: x}\n"))


def test_overrides_apply_and_are_validated(tmp_path: Path) -> None:
    p = _write(tmp_path, "seed: 1\n")
    assert load_config(p, ["seed=7"]).seed == 7
    with pytest.raises(ConfigError, match="unknown key 'sede'"):
        load_config(p, ["sede=7"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(p, ["seed"])


def test_override_keys_that_cannot_be_set_are_named(tmp_path: Path) -> None:
    """'=1' used to report an unknown key '<root>', an index into a mapping an unknown key '0'."""
    two = "data:\n  train:\n    - {format: cc_tsv, path: a.tsv}\n    - {format: cc_tsv, path: b.tsv}\n"
    one = "data:\n  train: {format: cc_tsv, path: a.tsv}\n"
    assert load_config(_write(tmp_path, two), ["data.train.1.path=c.tsv"]).data.train[1].path == tmp_path / "c.tsv"
    assert load_config(_write(tmp_path, two), ["data.train.1={format: cc_tsv, path: d.tsv}"]).data.train[1].path == tmp_path / "d.tsv"
    for override, message in [
        ("=1", r"--set '': the key has an empty part"),
        ("train..epochs=2", r"--set 'train..epochs': the key has an empty part"),
        ("data.train.2.path=c.tsv", r"'2' is not an index of data.train, a list of 2"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(_write(tmp_path, two), [override])
    with pytest.raises(ConfigError, match=r"data.train is a mapping, not a list, so '0' is no index \(its keys: format, path\)"):
        load_config(_write(tmp_path, one), ["data.train.0.path=c.tsv"])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "data: [unclosed\n"))


def test_a_config_that_is_not_utf8_is_named_not_a_traceback(tmp_path: Path) -> None:
    p = tmp_path / "run.yaml"
    p.write_bytes("# café notes\nseed: 1\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"run\.yaml: not UTF-8 text \(byte 5: b'\\xe9'\); save it as UTF-8"):
        load_config(p)
    p.write_bytes(b"\xef\xbb\xbfseed: 4\n")  # a byte-order mark is no key
    assert load_config(p).seed == 4


def test_a_key_given_twice_is_an_error_not_the_last_one_silently(tmp_path: Path) -> None:
    text = "train: {task: classification, epochs: 5}\nseed: 1\ntrain: {task: classification, epochs: 1}\n"
    with pytest.raises(ConfigError, match=r"key 'train' appears twice in one mapping \(first on line 1\)"):
        load_config(_write(tmp_path, text))
    with pytest.raises(ConfigError, match="key 'lr' appears twice"):
        load_config(_write(tmp_path, "optim:\n  lr: 0.1\n  lr: 0.2\n"))


def test_parse_single_source(tmp_path: Path) -> None:
    spec = parse_source({"format": "image_folder", "root": "pics"}, "inline", tmp_path)
    assert spec.root == (tmp_path / "pics").resolve()
    with pytest.raises(ConfigError, match="a data source needs a 'format' key"):
        parse_source({"root": "pics"}, "inline", tmp_path)


def test_a_single_source_needs_no_list(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "data:\n  val: {format: image_folder, root: pics}\n"))
    assert len(cfg.data.val) == 1 and cfg.data.val[0].root == (tmp_path / "pics").resolve()


def test_webdataset_urls_are_not_turned_into_paths(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "data:\n  train: {format: webdataset, urls: ['https://h/x-{0..1}.tar', 'local.tar']}\n"))
    assert cfg.data.train[0].urls == ["https://h/x-{0..1}.tar", str((tmp_path / "local.tar").resolve())]


def test_a_pretrained_towers_relative_path_means_a_folder_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "bert").mkdir()
    text = {"name": "hf_text", "path": "bert", "pool": "mean"}
    tree = {"model": {"type": "dual_encoder", "vision": {"name": "hf_vision", "path": "all-minilm-l6-v2"}, "text": text}}
    (tmp_path / "cfg" / "run.yaml").write_text(yaml.safe_dump(tree))
    cfg = load_config(tmp_path / "cfg" / "run.yaml")
    assert cfg.model.text.options()["path"] == str((tmp_path / "cfg" / "bert").resolve()) and cfg.model.text.options()["pool"] == "mean"
    assert cfg.model.vision.options()["path"] == "all-minilm-l6-v2"  # not a folder there: a name, kept as written
    tree = {"model": {"type": "pretrained", "path": "bert"}}
    (tmp_path / "cfg" / "ft.yaml").write_text(yaml.safe_dump(tree))
    assert load_config(tmp_path / "cfg" / "ft.yaml").model.path == str((tmp_path / "cfg" / "bert").resolve())
    # nested: a video encoder's frame tower taken from a run beside the config
    (tmp_path / "quickstart_out" / "run").mkdir(parents=True)
    frame = {"name": "run_vision", "path": "../quickstart_out/run", "freeze": True}
    tree = {"model": {"type": "vqa", "vision": {"name": "video", "frame_encoder": frame, "tokens": "patches"}, "text": text}}
    (tmp_path / "cfg" / "video.yaml").write_text(yaml.safe_dump(tree))
    vision = load_config(tmp_path / "cfg" / "video.yaml").model.vision.options()
    assert vision["frame_encoder"] == frame | {"path": str((tmp_path / "quickstart_out" / "run").resolve())} and vision["tokens"] == "patches"


def test_a_shipped_model_config_is_named_and_swapped_with_set(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model: sentiment-tfn\ntrain: {task: regression}\n")
    assert load_config(path).model.fusion == "tensor"
    assert load_config(path, ["model=sentiment-mult"]).model.early_fusion == "mult"
    with pytest.raises(ConfigError, match="'sentiment-xx' is not a shipped model config; shipped: .*sentiment-lmf"):
        load_config(path, ["model=sentiment-xx"])


def test_the_shipped_mosi_run_config_parses() -> None:
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "mosi.yaml")
    assert cfg.train.task == "regression" and cfg.data.train[0].format == "mosi" and cfg.model.early_fusion == "mult"


@pytest.mark.parametrize("name", ["av_world_statements", "av_world_retrieval", "av_world_vqa"])
def test_the_shipped_audio_visual_run_configs_parse_and_read_their_media(name: str) -> None:
    from polymodal.models.inputs import model_inputs

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    inputs = model_inputs(cfg.model)
    assert inputs.video_key == ("video" if name == "av_world_statements" else "image")
    assert inputs.audio == (name == "av_world_statements")


SHIPPED = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in SHIPPED.glob("*.yaml")))
def test_every_shipped_config_is_valid(name: str) -> None:
    cfg = load_config(SHIPPED / name)
    assert cfg.train.task


def test_the_shipped_world_retrieval_config_trains_the_run_the_readme_serves(tmp_path: Path) -> None:
    """README's index / search / serve / export examples load runs/world_retrieval: the shipped config
    must make it from the world that `polymodal data world --out world` writes beside configs/."""
    import shutil

    from polymodal.data.world import WorldConfig, generate_world
    from polymodal.train.trainer import Trainer

    generate_world(tmp_path / "world", WorldConfig(num_scenes=40, seed=1), workers=1)
    (tmp_path / "configs").mkdir()
    shutil.copy(SHIPPED / "world_retrieval.yaml", tmp_path / "configs")
    overrides = [f"output_dir={tmp_path / 'runs/world_retrieval'}", "train.max_steps=2", "train.batch_size=16", "train.num_workers=0"]
    summary = Trainer(load_config(tmp_path / "configs/world_retrieval.yaml", overrides), progress=False).fit()
    assert summary["steps"] == 2 and "t2i_R@1" in summary["test"]


def test_image_normalisation_that_makes_nan_pixels_is_a_config_error(tmp_path: Path) -> None:
    p = _write(tmp_path, "seed: 1\n")
    with pytest.raises(ConfigError, match=r"key 'image.std\[0\]': Input should be greater than 0"):
        load_config(p, ["image.std=[0, 0.5, 0.5]"])
    with pytest.raises(ConfigError, match=r"key 'image.mean\[1\]': Input should be a finite number"):
        load_config(p, ["image.mean=[0.5, .nan, 0.5]"])
