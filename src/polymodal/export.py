"""Export a dual encoder's image and text towers to ONNX, checked against PyTorch with onnxruntime.

    from polymodal.export import export_onnx

    result = export_onnx("runs/world_retrieval", "retrieval_onnx")   # or a CLIP / SigLIP folder or zoo name
    print(result.summary())

The folder then holds everything a serving stack needs, without polymodal or PyTorch:

* ``image_encoder.onnx``: ``pixel_values`` ``[batch, 3, H, W]`` float32 -> ``image_embeds`` ``[batch, D]``;
* ``text_encoder.onnx``: ``input_ids``, ``attention_mask`` ``[batch, sequence]`` int64 -> ``text_embeds``
  ``[batch, D]``; both embeddings are L2-normalised, so ``image_embeds @ text_embeds.T`` is the cosine
  similarity (times ``logit_scale`` for the model's logits);
* ``export.json``: the inputs and outputs, the embedding size, ``logit_scale``, the image preprocessing
  (size, mean, std, resize mode) and the text ``max_length`` and padding;
* the tokenizer (``tokenizer.json``; a Hugging Face checkpoint's tokenizer and image processor files).

The batch axis (and the text's sequence axis) is dynamic. Unless ``check=False`` the export is run by
onnxruntime on generated images and texts, at batch sizes other than the one traced, and compared to
the PyTorch model; a difference above ``atol`` fails the export and nothing is written. The folder is
written atomically: into a temporary folder beside it, renamed into place when complete.

Exporters: ``torch.onnx.export(dynamo=True)`` (``torch.export``-based, the maintained one) writes opset 18
and newer; the TorchScript exporter (deprecated by PyTorch since 2.9) writes older opsets. ``exporter="auto"``
uses the first, and the second for ``opset < 18`` or when ``torch.export`` cannot capture a model.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn

from polymodal.atomic import fsync_path, replace_dir
from polymodal.errors import ConfigError, PolymodalError

__all__ = [
    "DEFAULT_ATOL",
    "EXPORTERS",
    "IMAGE_FILE",
    "MANIFEST_FILE",
    "TEXT_FILE",
    "ExportError",
    "ExportResult",
    "OnnxCheckError",
    "check_onnx_export",
    "export_dual_encoder_onnx",
    "export_onnx",
    "sample_images",
]

IMAGE_FILE = "image_encoder.onnx"
TEXT_FILE = "text_encoder.onnx"
MANIFEST_FILE = "export.json"
MANIFEST_FORMAT = "polymodal-onnx-dual-encoder"
DEFAULT_ATOL = 1e-4
EXPORTERS = ("auto", "dynamo", "torchscript")
MIN_DYNAMO_OPSET = 18  # torch.export-based exporter; asking it for less silently gives 18
MIN_OPSET = 14  # scaled_dot_product_attention has no ONNX form before 14

# What the export traces with (batch 2) and what the check runs (batches 3 and 1: neither is the traced
# size, and the texts' lengths differ from the traced ones, so both dynamic axes are exercised).
SAMPLE_TEXTS = (
    "a red cube left of a blue sphere",
    "two green cones",
    "a small yellow cylinder behind a large purple cube on a wooden floor",
)
TRACE_BATCH = 2
CHECK_BATCHES = (3, 1)

logger = logging.getLogger(__name__)


class ExportError(PolymodalError):
    """A model could not be exported (unsupported model, exporter failure, unwritable folder)."""


class OnnxCheckError(ExportError):
    """onnxruntime's outputs differ from PyTorch's by more than the tolerance."""


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and measured."""

    out_dir: Path
    image_encoder: Path
    text_encoder: Path
    manifest: Path
    files: list[Path]  # every file written, manifest and tokenizer included
    source: str
    family: str  # "polymodal", "clip", "siglip"
    exporter: str  # "dynamo" or "torchscript"
    opset: int
    embed_dim: int
    image_shape: tuple[int, int, int]  # [3, H, W] of one processed image
    atol: float
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # file name -> max |onnx - torch|; empty: not checked
    checked_batch_sizes: tuple[int, ...] = ()
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def checked(self) -> bool:
        return bool(self.max_abs_diff)

    def summary(self) -> str:
        c, h, w = self.image_shape
        lines = [
            (
                f"exported the {self.family} dual encoder from {self.source} to {self.out_dir} "
                f"({self.exporter} exporter, opset {self.opset}, {self.seconds:.1f} s)"
            ),
            f"  {IMAGE_FILE}: pixel_values [batch, {c}, {h}, {w}] float32 -> image_embeds [batch, {self.embed_dim}]",
            f"  {TEXT_FILE}: input_ids, attention_mask [batch, sequence] int64 -> text_embeds [batch, {self.embed_dim}]",
            "  files: " + ", ".join(p.name for p in self.files),
        ]
        if self.checked:
            diffs = ", ".join(f"{name} {d:.2e}" for name, d in self.max_abs_diff.items())
            sizes = " and ".join(str(b) for b in self.checked_batch_sizes)
            lines.append(f"checked with onnxruntime at batch sizes {sizes}: max |onnx - torch| {diffs} (tolerance {self.atol:g})")
        else:
            lines.append("not checked with onnxruntime (--no-check)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ----- inputs -------------------------------------------------------------------------------------


def sample_images(n: int, seed: int = 0) -> list[Image.Image]:
    """``n`` generated RGB images of different sizes (shapes on a noisy background): real pixels for
    the processors, so the export and its check see what a user's images go through."""
    rng = np.random.default_rng(seed)
    sizes = [(64, 48), (40, 72), (96, 96), (57, 33), (128, 80)]
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        base = rng.integers(0, 256, size=3)
        noise = rng.normal(0, 20, size=(h, w, 3))
        img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
            x1, y1 = x0 + int(rng.integers(4, max(5, w // 2))), y0 + int(rng.integers(4, max(5, h // 2)))
            fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
        out.append(img)
    return out


class _ImageTower(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.model.encode_image(pixel_values)


class _TextTower(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model.encode_text(input_ids, attention_mask)


def _image_batch(processors: Any, n: int, seed: int = 0) -> Tensor:
    return processors.images(sample_images(n, seed)).float()


def _text_batch(processors: Any, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
    ids, mask = processors.texts(list(texts))
    return ids.long(), mask.long()


# ----- checks before any work ----------------------------------------------------------------------


def _require_packages(exporter: str, check: bool) -> None:
    from polymodal.modules.encoders.hf import MissingDependencyError

    needed = ["onnx"]
    if exporter in ("auto", "dynamo"):
        needed.append("onnxscript")
    if check:
        needed.append("onnxruntime")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependencyError(
            f"ONNX export needs the {', '.join(missing)} package{'s' if len(missing) > 1 else ''} "
            "(onnxruntime checks the export against PyTorch): pip install 'polymodal[export]'"
        )


def _check_options(opset: int | None, exporter: str, atol: float) -> None:
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET):
        raise ConfigError(f"opset must be an integer >= {MIN_OPSET} (attention has no ONNX form before opset 14), got {opset!r}")
    if exporter == "dynamo" and opset is not None and opset < MIN_DYNAMO_OPSET:
        raise ConfigError(
            f"opset {opset}: the torch.export-based (dynamo) exporter writes opset {MIN_DYNAMO_OPSET} and newer; "
            "use exporter 'torchscript' (or 'auto') for an older opset"
        )
    if not (atol > 0):
        raise ConfigError(f"atol must be > 0, got {atol!r}")


def _check_out_dir(out_dir: Path, overwrite: bool, source: str | os.PathLike[str] | None = None) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder; give --out a folder path")
    # the export replaces out_dir whole: it must not hold the weights it exports, nor the folder we work in
    here = out_dir.resolve()
    guarded = [(Path.cwd().resolve(), "the current folder")]
    if source is not None and Path(source).exists():
        guarded.append((Path(source).resolve(), f"the model it exports ({source})"))
    for path, what in guarded:
        if path == here or here in path.parents:
            raise ExportError(f"--out {out_dir} is or contains {what}, and an export replaces its folder whole; give it a folder of its own")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir} exists and is not empty; choose another folder, or replace it with --overwrite (overwrite=True in Python)")


def _check_request(
    out: Path, opset: int | None, exporter: str, atol: float, check: bool, overwrite: bool, source: str | os.PathLike[str] | None = None
) -> None:
    """Everything about the request that can be wrong before a model is touched."""
    _check_options(opset, exporter, atol)
    _require_packages(exporter, check)
    _check_out_dir(out, overwrite, source)


def _check_model(model: nn.Module, processors: Any) -> None:
    source = processors.source or "the model"
    if processors.model_type != "dual_encoder":
        raise ExportError(f"{source} holds a {processors.model_type!r} model; ONNX export covers dual encoders (image and text towers)")
    missing = [m for m in ("encode_image", "encode_text") if not callable(getattr(model, m, None))]
    if missing:
        raise ExportError(f"{source}: the {type(model).__name__} model has no {' / '.join(missing)}, which ONNX export of a dual encoder needs")
    if processors.tokenizer is None:
        raise ExportError(f"{source} has no text tokenizer, which the text tower's export needs")


# ----- the exporters -------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters warn about things that are fine here (tracer warnings, skipped torchvision ops,
    deprecation of the TorchScript path); keep them out of the user's terminal."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _export_tower(
    tower: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    input_names: list[str],
    output_name: str,
    axes: dict[str, dict[int, str]],
    opset: int | None,
    exporter: str,
) -> None:
    """Write one tower with ``exporter`` ("dynamo" or "torchscript")."""
    with _quiet(), torch.no_grad():
        if exporter == "dynamo":
            dims = {name: torch.export.Dim(name) for name in sorted({n for a in axes.values() for n in a.values()})}
            shapes = {inp: {i: dims[name] for i, name in axes[inp].items()} for inp in input_names}
            program = torch.onnx.export(
                tower, args, None, input_names=input_names, output_names=[output_name],
                dynamic_shapes=shapes, opset_version=opset, dynamo=True, verbose=False,
            )
            if program is None:  # pragma: no cover - torch returns the program when f is None
                raise ExportError(f"{path.name}: torch.onnx.export returned no program")
            program.save(str(path))  # weights go to a .data file beside it only above protobuf's 2 GB
        else:
            dynamic_axes = {**{inp: axes[inp] for inp in input_names}, output_name: {0: "batch"}}
            torch.onnx.export(
                tower, args, str(path), input_names=input_names, output_names=[output_name],
                dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False, do_constant_folding=True,
            )


def _graph_info(path: Path) -> tuple[int, dict[str, list[dict[str, Any]]]]:
    """The opset a file was written with, and its inputs and outputs as ONNX declares them (names,
    dtypes and shapes, with the dynamic axes by name)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    opset = next(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))

    def spec(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims})
        return out

    return opset, {"inputs": spec(proto.graph.input), "outputs": spec(proto.graph.output)}


def _export_towers(model: nn.Module, processors: Any, folder: Path, opset: int | None, exporter: str, notes: list[str]) -> str:
    """Write both towers into ``folder``; returns the exporter that wrote them."""
    images = _image_batch(processors, TRACE_BATCH, seed=1)
    ids, mask = _text_batch(processors, SAMPLE_TEXTS[:TRACE_BATCH])
    towers = [
        (IMAGE_FILE, _ImageTower(model).eval(), (images,), ["pixel_values"], "image_embeds", {"pixel_values": {0: "batch"}}),
        (TEXT_FILE, _TextTower(model).eval(), (ids, mask), ["input_ids", "attention_mask"], "text_embeds",
         {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}),
    ]
    chosen = exporter if exporter != "auto" else ("torchscript" if opset is not None and opset < MIN_DYNAMO_OPSET else "dynamo")
    for attempt in ([chosen, "torchscript"] if exporter == "auto" and chosen == "dynamo" else [chosen]):
        try:
            for name, tower, args, inputs, output, axes in towers:
                logger.info("exporting %s with the %s exporter", name, attempt)
                _export_tower(tower, args, folder / name, inputs, output, axes, opset, attempt)
                written = _graph_info(folder / name)[0] if opset is not None else opset
                if written != opset:  # the dynamo exporter falls back to its own opset when it cannot convert
                    raise ExportError(f"{name}: opset {opset} was asked for, but the {attempt} exporter wrote opset {written}")
            return attempt
        except ExportError:
            raise
        except Exception as e:
            for p in list(folder.iterdir()):
                if p.name.endswith((".onnx", ".data")):
                    p.unlink()
            if attempt == "dynamo" and exporter == "auto":
                notes.append(f"torch.export could not capture the model ({_first_line(e)}); used the TorchScript exporter")
                logger.info("the dynamo exporter failed (%s); trying the TorchScript exporter", _first_line(e))
                continue
            source = processors.source or "the model"
            raise ExportError(f"exporting {name} of {source} to ONNX failed with the {attempt} exporter: {_first_line(e)}") from e
    raise AssertionError("unreachable")  # pragma: no cover


# ----- the check -----------------------------------------------------------------------------------


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors (Fail, InvalidGraph, ...) derive from Exception only
        raise OnnxCheckError(f"{path}: onnxruntime cannot load it: {_first_line(e)}") from None


def _run_onnx(session: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The first output of ``session`` on ``feeds`` (one place, so tests can tamper with it)."""
    return np.asarray(session.run(None, feeds)[0])


def check_onnx_export(
    out_dir: str | os.PathLike[str],
    model: nn.Module,
    processors: Any,
    *,
    atol: float = DEFAULT_ATOL,
    batch_sizes: Sequence[int] = CHECK_BATCHES,
) -> dict[str, float]:
    """Run the exported towers in ``out_dir`` with onnxruntime and compare them to ``model``.

    Generated images and texts go through ``processors`` at each batch size; returns the largest
    absolute difference per file and raises :class:`OnnxCheckError`, naming the file and the
    difference, when one is above ``atol`` (or an output has the wrong shape or is not finite).
    """
    folder = Path(out_dir)
    n = max(batch_sizes)
    all_images = _image_batch(processors, n, seed=2)
    texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] + (f" number {i}" if i >= len(SAMPLE_TEXTS) else "") for i in range(n)]
    diffs: dict[str, float] = {}
    problems: list[str] = []
    for name in (IMAGE_FILE, TEXT_FILE):
        path = folder / name
        session = _session(path)
        worst = 0.0
        for b in batch_sizes:
            with torch.no_grad():
                if name == IMAGE_FILE:
                    images = all_images[:b]
                    want = model.encode_image(images)
                    feeds = {"pixel_values": images.numpy()}
                else:
                    ids, mask = _text_batch(processors, texts[:b])
                    want = model.encode_text(ids, mask)
                    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
            try:
                got = _run_onnx(session, feeds)
            except Exception as e:  # noqa: BLE001 - onnxruntime's errors derive from Exception only
                shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
                raise OnnxCheckError(f"{path}: onnxruntime fails on a batch of {b} ({shapes}): {_first_line(e)}") from None
            expected = want.detach().float().cpu().numpy()
            if got.shape != expected.shape:
                problems.append(f"{path}: a batch of {b} gives an output of shape {list(got.shape)}, PyTorch gives {list(expected.shape)}")
                worst = float("inf")
                break
            if not np.isfinite(got).all():
                problems.append(f"{path}: a batch of {b} gives non-finite outputs")
                worst = float("inf")
                break
            worst = max(worst, float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max()))
        diffs[name] = worst
        if worst > atol and np.isfinite(worst):
            problems.append(
                f"{path}: onnxruntime's outputs differ from PyTorch's by up to {worst:.3g} "
                f"(max abs difference; tolerance {atol:g}) at batch sizes {', '.join(map(str, batch_sizes))}"
            )
    if problems:
        raise OnnxCheckError("the ONNX export does not reproduce the PyTorch model: " + "; ".join(problems))
    return diffs


# ----- writing ------------------------------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)


def _save_preprocessing(processors: Any, folder: Path) -> tuple[str, list[str]]:
    """Tokenizer (and a Hugging Face image processor) beside the graphs; returns (format, file names)."""
    before = {p.name for p in folder.iterdir()}
    tok = processors.tokenizer
    image = processors.image
    if hasattr(tok, "save"):  # polymodal's TextTokenizer: tokenizer.json
        tok.save(folder)
        fmt = "polymodal"
    elif hasattr(getattr(tok, "tokenizer", None), "save_pretrained"):  # a transformers tokenizer
        tok.tokenizer.save_pretrained(str(folder))
        fmt = "huggingface"
    else:
        raise ExportError(f"{processors.source}: cannot save its {type(tok).__name__} tokenizer beside the ONNX files")
    hf_image = getattr(image, "processor", None)
    if hasattr(hf_image, "save_pretrained"):
        hf_image.save_pretrained(str(folder))
    return fmt, sorted({p.name for p in folder.iterdir()} - before)


def _manifest(
    model: nn.Module, processors: Any, source: str, family: str, exporter: str, opset: int, embed_dim: int,
    image_shape: tuple[int, int, int], tokenizer_format: str, tokenizer_files: list[str], io: dict[str, Any],
) -> dict[str, Any]:
    import onnx

    import polymodal

    tok = processors.tokenizer
    pad_to_max = bool(getattr(tok, "pad_to_max_length", False))
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "format_version": 1,
        "source": source,
        "resolved_source": processors.source,
        "model_type": processors.model_type,
        "family": family,
        "task": processors.task,
        "embed_dim": embed_dim,
        "normalized": True,
        "logit_scale": float(model.logit_scale),
        "logit_bias": float(getattr(model, "logit_bias", 0.0)) if family == "siglip" else None,
        "similarity": "logit_scale * image_embeds @ text_embeds.T" + (" + logit_bias (sigmoid)" if family == "siglip" else " (softmax)"),
        "image_encoder": {"file": IMAGE_FILE, **io[IMAGE_FILE]},
        "text_encoder": {"file": TEXT_FILE, **io[TEXT_FILE]},
        "image_size": [image_shape[1], image_shape[2]],
        "image_processor_format": "huggingface" if hasattr(getattr(processors.image, "processor", None), "save_pretrained") else "polymodal",
        "image_processor": processors.image.to_dict(),
        "text": {
            "max_length": int(processors.max_length),
            "padding": "max_length" if pad_to_max else "longest",
            "pad_id": int(getattr(tok, "pad_id", 0) or 0),
            # polymodal's tokenizer cuts texts at max_length and puts the end token back as the last one
            "truncation": "max_length, last token set to sep_id" if tokenizer_format == "polymodal" else "max_length",
            "sep_id": getattr(tok, "sep_id", None) if tokenizer_format == "polymodal" else None,
            "tokenizer_format": tokenizer_format,
            "tokenizer_files": tokenizer_files,
        },
        "exporter": exporter,
        "opset": opset,
        "versions": {"polymodal": polymodal.__version__, "torch": torch.__version__, "onnx": onnx.__version__},
    }
    return manifest


def _commit(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` folder to ``out_dir``, replacing what is there (checked before)."""
    for p in tmp.iterdir():
        fsync_path(p)
    fsync_path(tmp)
    replace_dir(tmp, out_dir)


# ----- entry points --------------------------------------------------------------------------------


def export_dual_encoder_onnx(
    model: nn.Module,
    processors: Any,
    out_dir: str | os.PathLike[str],
    *,
    opset: int | None = None,
    check: bool = True,
    atol: float = DEFAULT_ATOL,
    overwrite: bool = False,
    exporter: str = "auto",
    source: str | None = None,
) -> ExportResult:
    """Export an already loaded dual encoder (``model, processors = load_model(...)``); see :func:`export_onnx`."""
    start = time.perf_counter()
    out = Path(out_dir)
    _check_request(out, opset, exporter, atol, check, overwrite, processors.source or None)
    _check_model(model, processors)
    source = source or processors.source or type(model).__name__
    family = str(getattr(model, "family", "polymodal"))
    was_training = model.training
    model.eval()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
    except OSError as e:
        raise ExportError(f"cannot create the export folder next to {out}: {e}") from None
    notes: list[str] = []
    try:
        used = _export_towers(model, processors, tmp, opset, exporter, notes)
        info = {name: _graph_info(tmp / name) for name in (IMAGE_FILE, TEXT_FILE)}
        written_opset = info[IMAGE_FILE][0]
        diffs: dict[str, float] = {}
        if check:
            diffs = check_onnx_export(tmp, model, processors, atol=atol)
        with torch.no_grad():
            probe = _image_batch(processors, 1, seed=3)
            embed_dim = int(model.encode_image(probe).shape[-1])
        image_shape = (int(probe.shape[1]), int(probe.shape[2]), int(probe.shape[3]))
        tok_format, tok_files = _save_preprocessing(processors, tmp)
        io = {name: spec for name, (_, spec) in info.items()}
        manifest = _manifest(model, processors, source, family, used, written_opset, embed_dim, image_shape, tok_format, tok_files, io)
        manifest["check"] = {"atol": atol, "batch_sizes": list(CHECK_BATCHES), "max_abs_diff": diffs} if check else None
        manifest["notes"] = notes
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, default=_json_default) + "\n", encoding="utf-8")
        names = sorted(p.name for p in tmp.iterdir())
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        model.train(was_training)
    return ExportResult(
        out_dir=out,
        image_encoder=out / IMAGE_FILE,
        text_encoder=out / TEXT_FILE,
        manifest=out / MANIFEST_FILE,
        files=[out / n for n in names],
        source=source,
        family=family,
        exporter=used,
        opset=written_opset,
        embed_dim=embed_dim,
        image_shape=image_shape,
        atol=atol,
        max_abs_diff=diffs,
        checked_batch_sizes=CHECK_BATCHES if check else (),
        notes=notes,
        seconds=time.perf_counter() - start,
    )


def export_onnx(
    name_or_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    opset: int | None = None,
    check: bool = True,
    atol: float = DEFAULT_ATOL,
    overwrite: bool = False,
    exporter: str = "auto",
    allow_download: bool = False,
) -> ExportResult:
    """Export the image and text towers of a dual encoder to ONNX in ``out_dir``.

    ``name_or_path`` is whatever :func:`polymodal.api.load_model` takes: a polymodal run, ``checkpoints/``
    or ``step_*`` folder of a dual encoder, a CLIP / SigLIP folder, or a zoo name. ``opset`` defaults to
    the exporter's (20 for the dynamo exporter); ``check`` runs the files with onnxruntime and compares
    them to PyTorch (max abs difference <= ``atol`` on the normalised embeddings). An ``out_dir`` that
    exists and is not empty is replaced only with ``overwrite=True``. ``exporter`` is ``"auto"``,
    ``"dynamo"`` or ``"torchscript"`` (see the module docstring).
    """
    from polymodal.api import load_model

    out = Path(out_dir)
    _check_request(out, opset, exporter, atol, check, overwrite, name_or_path)  # before reading any weights
    model, processors = load_model(name_or_path, "cpu", allow_download=allow_download)
    return export_dual_encoder_onnx(
        model, processors, out, opset=opset, check=check, atol=atol, overwrite=overwrite, exporter=exporter, source=str(name_or_path),
    )
