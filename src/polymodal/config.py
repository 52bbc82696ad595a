"""Typed run configs: YAML in, validated, every mistake reported with the key and the file.

Later capabilities (models, training, serving) add their own sections to :class:`RunConfig`; the
loading, ``--set`` overrides and error formatting here are shared by all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, ValidationInfo, field_validator

from polymodal.data.sources import DataSource
from polymodal.models.configs import ModelConfig
from polymodal.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored typos."""

    model_config = ConfigDict(extra="forbid")


class DataConfig(StrictModel):
    """Named splits, each one source or a list of sources that are concatenated."""

    train: list[DataSource] = Field(default_factory=list)
    val: list[DataSource] = Field(default_factory=list)
    test: list[DataSource] = Field(default_factory=list)

    @field_validator("train", "val", "test", mode="before")
    @classmethod
    def _one_source_is_a_list_of_one(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value


class TokenizerSettings(StrictModel):
    """Load a pretrained tokenizer (``path``: a tokenizer.json, a folder holding one, or a zoo name such
    as ``all-minilm-l6-v2``) or train one on the training texts."""

    path: Path | None = None
    kind: Literal["wordpiece", "bpe"] = "wordpiece"
    vocab_size: int = Field(2000, ge=10)
    max_length: int = Field(32, ge=4)
    padding: Literal["longest", "max_length"] = Field(
        "longest",
        description=(
            "pad each batch's texts to its longest text, or always to max_length: fixed shapes, so a compiled model "
            "compiles once and train.compile_mode: reduce-overhead records one CUDA graph, not one per text length "
            "(more padded work on GPUs; on CPU the packed attention drops the padding)"
        ),
    )


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
PositiveStd = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class ImageSettings(StrictModel):
    """Image preprocessing; the train-only augmentation keeps colour words true (no hue shift)."""

    size: int = Field(64, ge=8)
    mean: tuple[FiniteFloat, FiniteFloat, FiniteFloat] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[PositiveStd, PositiveStd, PositiveStd] = Field(
        (0.26862954, 0.26130258, 0.27577711), description="per channel, > 0 (a zero std makes every pixel inf)"
    )
    random_resized_crop: tuple[float, float] | None = None
    brightness: float = 0.0
    contrast: float = 0.0
    flip_prob: float = Field(0.0, ge=0.0, le=1.0, description="cross-modal flip: mirrors the image, swaps left/right in the text")
    jpeg_draft: bool = Field(False, description="decode large JPEGs at a reduced scale: ~2x faster loading at 640x480 -> 224, pixels within a few levels")
    cache_mb: int = Field(
        0, ge=0, description="keep decoded training images in memory, up to this many MB, so epochs after the first skip decoding (0: off; used with train.num_workers: 0)"
    )


class AudioSettings(StrictModel):
    """Audio decoding for models with an ``audio`` encoder: resampling, log-mel, SpecAugment (training only)."""

    sample_rate: int = Field(16000, ge=1000)
    n_fft: int = Field(400, ge=16)
    hop_length: int = Field(160, ge=1)
    n_mels: int = Field(64, ge=1)
    f_min: float = Field(0.0, ge=0)
    f_max: float | None = None
    max_seconds: float | None = Field(10.0, gt=0, description="longer clips: a random window in training, the start in evaluation")
    pad_to_max: bool = Field(False, description="pad shorter clips with silence to max_seconds (always on when audio is a dual encoder's tower)")
    freq_masks: int = Field(0, ge=0, description="SpecAugment frequency masks per clip (training only)")
    freq_width: int = Field(8, ge=1)
    time_masks: int = Field(0, ge=0, description="SpecAugment time masks per clip (training only)")
    time_width_fraction: float = Field(0.05, gt=0, le=1)


class VideoSettings(StrictModel):
    """Video decoding for models with a ``video`` encoder; frames are processed with the image settings."""

    num_frames: int = Field(8, ge=1)
    sampling: Literal["uniform", "stride"] = "uniform"
    stride: int = Field(4, ge=1)


class OptimSettings(StrictModel):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)


class EarlyStopping(StrictModel):
    metric: str
    mode: Literal["max", "min"] = "max"
    patience: int = Field(3, ge=1)


CUDA_GRAPH_COMPILE_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that replay CUDA graphs


class TrainSettings(StrictModel):
    task: Literal["retrieval", "captioning", "vqa", "classification", "regression", "multitask", "mllm"]
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    accumulation: int = Field(
        1, ge=1,
        description="micro-batches per optimizer step; the step's loss is the mean over all their samples (tokens for captioning), as one batch",
    )
    contrastive_accumulation: Literal["full_batch", "micro_batch"] | None = Field(
        None,
        description=(
            "accumulation > 1 on a contrastive model: 'full_batch' scores every pair of the accumulated batch, as one step on it "
            "would (gradient caching: one extra no-grad forward per micro-batch); 'micro_batch' sums micro-batch losses (fewer "
            "negatives); unset: full_batch where the model allows it (retrieval with a dual encoder, CLIP or SigLIP)"
        ),
    )
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    bf16_residual: bool = Field(
        False,
        description=(
            "with precision: bf16, keep the transformer stacks' residual stream in bf16 instead of autocast's fp32: residual adds, "
            "their gradients and (compiled, or on CPU) LayerNorm inputs move half the bytes; meant for GPUs with train.compile, "
            "where those passes are memory-bound; the residual sums are rounded to bf16, as Megatron-LM does by default"
        ),
    )
    compile: bool = Field(
        False,
        description=(
            "run the training forward under torch.compile (Inductor); the first steps compile, and each new batch shape "
            "once more until dynamic shapes take over; evaluation runs eagerly"
        ),
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default",
        description=(
            "torch.compile's mode with compile: true. 'reduce-overhead' replays each step as a CUDA graph, so a GPU no "
            "longer waits on kernel launches (benchmarks/bench_train_gpu.py's CLIP ViT-B/32 step on an H100: 35.8% -> 42.8% "
            "MFU); it records one graph per batch shape (one per text length met, or one with tokenizer.padding: "
            "max_length) and needs accumulation: 1. 'max-autotune' adds autotuned matmul templates (compiles take minutes) to those CUDA "
            "graphs, 'max-autotune-no-cudagraphs' the templates alone"
        ),
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(2, ge=0)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(500, ge=1, description="optimizer steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    eval_every_epochs: int = Field(1, ge=1)
    max_eval_samples: int | None = Field(None, ge=1)
    early_stopping: EarlyStopping | None = None
    distributed: Literal["ddp", "fsdp"] = Field("ddp", description="strategy under torchrun; batch_size is per process")
    questions_per_image: int = Field(1, ge=1, description="multitask: questions drawn per image per step (the image is encoded once)")
    blind: bool = Field(False, description="mllm: remove every image and <image> marker (the text-only baseline of an assistant)")

    @field_validator("compile_mode")
    @classmethod
    def _compile_mode_needs_compile(cls, value: str, info: ValidationInfo) -> str:
        if value != "default" and info.data.get("compile") is False:
            raise ValueError(f"'{value}' is a torch.compile mode and acts only with compile: true")
        accumulation = info.data.get("accumulation", 1)
        if value in CUDA_GRAPH_COMPILE_MODES and accumulation > 1:
            # the first micro-batch's gradients are a graph output taken as .grad, which the next replay overwrites:
            # the accumulated gradient would be silently wrong (pytorch/pytorch#169545)
            raise ValueError(
                f"'{value}' replays CUDA graphs, which cannot accumulate gradients over micro-batches (accumulation: "
                f"{accumulation}): the next replay overwrites the gradients kept from the last; use 'max-autotune-no-cudagraphs' "
                "or 'default', or accumulation: 1"
            )
        return value

    @field_validator("bf16_residual")
    @classmethod
    def _bf16_residual_needs_bf16(cls, value: bool, info: ValidationInfo) -> bool:
        precision = info.data.get("precision")
        if value and precision is not None and precision != "bf16":  # None: precision's own error is reported
            raise ValueError(f"needs precision: bf16 (it acts only under bf16 autocast), got precision: {precision}")
        return value


class RunConfig(StrictModel):
    seed: int = 0
    output_dir: Path = Path("runs/default")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig | None = None
    init_from: Path | None = Field(
        None,
        description=(
            "a polymodal run (or one of its checkpoints) whose weights start this run, with its model, tokenizer, image, audio and "
            "video input settings and its heads' answers or classes: fine-tuning a trained run or one written by 'polymodal "
            "convert clip' (model may then be left out, or give only changes to the run's model)"
        ),
    )
    tokenizer: TokenizerSettings = Field(default_factory=TokenizerSettings)
    image: ImageSettings = Field(default_factory=ImageSettings)
    audio: AudioSettings = Field(default_factory=AudioSettings)
    video: VideoSettings = Field(default_factory=VideoSettings)
    missing_modality: Literal["skip", "zero", "learned"] = Field(
        "skip", description="a sample without a modality the model reads: skip it, zero-fill it, or use a learned embedding"
    )
    optim: OptimSettings = Field(default_factory=OptimSettings)
    train: TrainSettings | None = None

    @field_validator("model", mode="before")
    @classmethod
    def _shipped_model_by_name(cls, value: Any) -> Any:
        """``model: sentiment-mult`` names a shipped model config (``polymodal bench model`` lists them),
        so a baseline is swapped with ``--set model=sentiment-tfn`` instead of a copied YAML block."""
        if not isinstance(value, str):
            return value
        from polymodal.models.factory import MODEL_CONFIG_DIR, list_model_configs

        path = MODEL_CONFIG_DIR / f"{value}.yaml"
        if not path.is_file():
            raise ValueError(f"{value!r} is not a shipped model config; shipped: {', '.join(list_model_configs())}")
        return read_yaml(path)


def _location(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            # pydantic inserts the discriminator value (e.g. 'vqa_v2') into the location of a union member
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "<root>"


def format_validation_error(err: ValidationError, source: str, union_tags: frozenset[str] = frozenset(), root: Any = None) -> str:
    """Turn pydantic's report into lines that name the key, the file and what was expected.

    ``union_tags`` are the discriminator values of tagged unions in the model (pydantic puts them in
    the error location, where a user would not expect them); data-source formats are always included.
    ``root``: the validated type, whose sections' keys a misspelt key is matched against.
    """
    lines = [f"{source}: invalid configuration"]
    tags = union_tags | _discriminator_tags()
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x in tags))
        key = _location(loc)
        kind = e["type"]
        if kind == "extra_forbidden":
            hint = _close_key(root, loc) if loc and root is not None else None
            spelled = f"; did you mean '{hint}'? (see" if hint else " (check the spelling; see"
            lines.append(f"  unknown key '{key}'{spelled} the documented fields of this section)")
        elif kind == "missing":
            lines.append(f"  missing required key '{key}'")
        elif kind == "union_tag_invalid":
            lines.append(f"  key '{key}.format': {e['msg']}")
        elif kind == "union_tag_not_found":
            lines.append(f"  key '{key}': a data source needs a 'format' key")
        else:
            lines.append(f"  key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _close_key(root: Any, loc: tuple[Any, ...]) -> str | None:
    """The key of the section at ``loc[:-1]`` nearest to the misspelt ``loc[-1]`` (``train.epoch`` ->
    ``epochs``), found by following ``loc`` through ``root``'s field types (lists, dicts, unions)."""
    import difflib
    import typing

    def concrete(t: Any) -> list[Any]:
        if typing.get_origin(t) in (typing.Union, typing.Annotated) or type(t).__name__ == "UnionType":
            return [c for a in typing.get_args(t) for c in concrete(a)]
        return [t]

    here = concrete(root)
    for part in loc[:-1]:
        step: list[Any] = []
        for t in here:
            args = typing.get_args(t)
            if isinstance(t, type) and issubclass(t, BaseModel) and isinstance(part, str) and part in t.model_fields:
                step += concrete(t.model_fields[part].annotation)
            elif typing.get_origin(t) in (list, tuple) and isinstance(part, int) and args:
                step += concrete(args[0])
            elif typing.get_origin(t) is dict and len(args) == 2:
                step += concrete(args[1])
        here = step
    keys = {f for t in here if isinstance(t, type) and issubclass(t, BaseModel) for f in t.model_fields}
    close = difflib.get_close_matches(str(loc[-1]), sorted(keys - {loc[-1]}), n=1, cutoff=0.75)
    return close[0] if close else None


def _discriminator_tags() -> frozenset[str]:
    from polymodal.data.sources import FORMAT_NAMES
    from polymodal.models.configs import MODEL_TYPES

    return frozenset(FORMAT_NAMES) | frozenset(MODEL_TYPES)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    if not all(k.strip() for k in keys):
        raise ConfigError(f"{source}: --set {dotted!r}: the key has an empty part; write it as section.key=value")
    node: Any = tree
    for depth, k in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[:depth]) or "the config"
        if isinstance(node, list):
            try:
                index = int(k)
                node[index]  # noqa: B018 - the range check
            except (ValueError, IndexError):
                raise ConfigError(
                    f"{source}: --set {dotted}: '{k}' is not an index of {where}, a list of {len(node)}"
                ) from None
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if k.isdigit() and k not in node:
            # a list index given to a mapping: data.train.0.images when data.train is one source
            raise ConfigError(
                f"{source}: --set {dotted}: {where} is a mapping, not a list, so '{k}' is no index "
                f"(its keys: {', '.join(map(str, node)) or 'none'})"
            )
        if last:
            node[k] = value
            return
        node = node.setdefault(k, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"{source}: --set {dotted}: '{k}' holds a value, not a section")


def apply_overrides(tree: dict[str, Any], overrides: list[str], source: str = "--set") -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides; values are parsed as YAML (so 3, 1e-4, true, [a, b] work)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw), source)
    return tree


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: PyYAML keeps the last
    silently, so a second ``train:`` block would replace the first without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (first on line {first})", key_node.start_mark
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not content
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def resolve_paths(cfg: Any, base_dir: Path) -> Any:
    """Anchor the relative paths of every data source at ``base_dir``."""
    if isinstance(cfg, DataConfig):
        return DataConfig(**{name: [s.resolved(base_dir) for s in getattr(cfg, name)] for name in ("train", "val", "test")})
    if isinstance(cfg, RunConfig):
        update: dict[str, Any] = {"data": resolve_paths(cfg.data, base_dir)}
        from polymodal.hub.zoo import ZOO

        tok = cfg.tokenizer.path
        if tok is not None and not tok.is_absolute() and str(tok) not in ZOO:  # a zoo name stays a name
            update["tokenizer"] = cfg.tokenizer.model_copy(update={"path": (base_dir / cfg.tokenizer.path).resolve()})
        if cfg.model is not None:
            update["model"] = _anchor_tower_paths(cfg.model, base_dir)
        if cfg.init_from is not None:
            update["init_from"] = _init_run_path(cfg.init_from, base_dir)
        return cfg.model_copy(update=update)
    return cfg


def _anchor_tower_paths(model: Any, base_dir: Path) -> Any:
    """A pretrained tower's (or checkpoint's) relative ``path`` means a folder beside the config, when
    one is there; otherwise it stays as written (a zoo name, a hub repo id, or relative to the cwd)."""
    from polymodal.models.configs import EncoderSpec

    def anchored(path: Any) -> Any:
        if isinstance(path, str) and not Path(path).is_absolute() and (base_dir / path).exists():
            return str((base_dir / path).resolve())
        return path

    def nested_anchored(options: dict[str, Any]) -> dict[str, Any]:
        """``path`` anchored here and in nested encoder specs (a video's ``frame_encoder: {name: run_vision, path: ...}``)."""
        return {
            k: anchored(v) if k == "path" else nested_anchored(v) if isinstance(v, dict) else v
            for k, v in options.items()
        }

    def spec_anchored(spec: EncoderSpec) -> EncoderSpec:
        dumped = spec.model_dump()
        anchored_spec = nested_anchored(dumped)
        return EncoderSpec(**anchored_spec) if anchored_spec != dumped else spec

    update: dict[str, Any] = {}
    for name in ("vision", "text", "decoder"):
        spec = getattr(model, name, None)
        if isinstance(spec, EncoderSpec):
            update[name] = spec_anchored(spec)
    encoders = getattr(model, "encoders", None)
    if isinstance(encoders, dict):
        update["encoders"] = {m: spec_anchored(s) for m, s in encoders.items()}
    if model.type == "pretrained":
        update["path"] = anchored(model.path)
    if model.type == "mllm":  # the language model's folder and the run a stage starts from
        update["lm"] = anchored(model.lm)
        update["init_from"] = anchored(model.init_from)
    return model.model_copy(update=update) if update else model


def validate(model: type[M], tree: Any, source: str) -> M:
    try:
        return model.model_validate(tree if tree is not None else {})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, root=model)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a run config, apply ``--set`` overrides, validate it and resolve its relative paths."""
    path = Path(path)
    tree = read_yaml(path) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(tree).__name__}")
    apply_overrides(tree, overrides or [], source=str(path))
    _complete_model_from_init_run(tree, path.parent.resolve())
    cfg = validate(RunConfig, tree, str(path))
    return resolve_paths(cfg, path.parent.resolve())


def _init_run_path(value: Any, base_dir: Path) -> Path:
    """``init_from`` as a full path: a run beside the config when one is there, else the cwd's."""
    path = Path(str(value))
    return (base_dir / path).resolve() if not path.is_absolute() and (base_dir / path).exists() else path.resolve()


def _deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _complete_model_from_init_run(tree: dict[str, Any], base_dir: Path) -> None:
    """With ``init_from``, a ``model`` mapping holds changes to the run's own model (``model: {vision:
    {freeze: true}}`` locks its image tower), so it is merged onto that model before validation."""
    changes = tree.get("model")
    if tree.get("init_from") is None or not isinstance(changes, dict):
        return
    from polymodal.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint

    try:
        saved = load_checkpoint(_init_run_path(tree["init_from"], base_dir)).model_config
    except CheckpointError as e:
        # the first run moved: a run that already started from it holds the same model in its own checkpoints
        own = latest_checkpoint(Path(str(tree.get("output_dir", RunConfig.model_fields["output_dir"].default))))
        if own is None:
            raise ConfigError(f"init_from {str(tree['init_from'])!r}: {e}") from None
        saved = load_checkpoint(own).model_config
    if changes.get("type", saved.get("type")) == saved.get("type"):  # another type is refused, naming both, by the trainer
        tree["model"] = _deep_merge(saved, changes)


_SOURCE_ADAPTER: TypeAdapter[Any] = TypeAdapter(DataSource)


def parse_source(tree: Any, source: str, base_dir: Path) -> DataSource:
    """Validate one data-source mapping (e.g. from ``polymodal data check``)."""
    try:
        spec = _SOURCE_ADAPTER.validate_python(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, root=DataSource)) from None
    return spec.resolved(base_dir)
