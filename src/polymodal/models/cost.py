"""What a model costs: parameters, FLOPs, peak memory and latency per sample, for ``polymodal bench model``.

FLOPs are counted by torch's own FlopCounterMode on a real forward pass (matmuls and convolutions,
the terms that dominate), not estimated from a formula, so they stay right as the code changes.

Peak memory is what one forward pass allocates *on top of* the weights and the inputs (activations,
temporaries, outputs), at its highest point:

* on CUDA: ``torch.cuda.max_memory_allocated()`` after a reset, minus what was allocated before the pass
  (the caching allocator's view, so it includes allocator rounding);
* on CPU: :class:`LiveTensorBytes`, a TorchDispatchMode that adds the ``nbytes`` of every new storage an
  op returns and subtracts it when the last tensor on that storage is freed (``weakref.finalize``);
  views share their base's storage and are counted once. It sees only memory torch ops hand back, not
  scratch buffers inside a kernel (oneDNN workspaces) or the allocator's caching, so it is a lower
  bound of the process's growth, but exact and repeatable for what the model keeps alive.

Dummy inputs come from the config: images at the vision tower's ``image_size``, token ids of half the
text tower's ``max_length``, a log-mel ``[n_mels, DUMMY_AUDIO_FRAMES]`` for an audio encoder, clips of
``min(DUMMY_VIDEO_FRAMES, max_frames)`` frames for a video encoder, ``[DUMMY_FEATURE_STEPS, input_dim]``
sequences for a ``features`` encoder.
"""

from __future__ import annotations

import statistics
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from polymodal.errors import ConfigError
from polymodal.models.factory import BuildContext, build_model
from polymodal.models.inputs import AUDIO_ENCODERS, FEATURE_ENCODERS, VIDEO_ENCODERS, model_inputs
from polymodal.models.vqa import AnswerVocab

DUMMY_AUDIO_FRAMES = 100  # one second of log-mel at the AudioProcessor's default 100 frames/s
DUMMY_VIDEO_FRAMES = 8
DUMMY_FEATURE_STEPS = 50  # MOSI-style utterances are tens of word-aligned steps


@dataclass
class ModelCost:
    name: str
    params: int
    trainable: int
    flops_per_sample: float  # forward
    latency_ms_per_sample: float  # forward, median over repeats, on the current device/threads
    peak_memory_bytes: int = 0  # one forward pass of the whole batch, above weights + inputs (module docstring)
    batch: int = 1
    device: str = "cpu"

    HEADER = f"{'model':<24} {'params':>10} {'trainable':>10} {'GFLOP/sample':>13} {'peak MiB':>10} {'ms/sample':>10}"

    def format(self) -> str:
        return (
            f"{self.name:<24} {self.params / 1e6:9.2f}M {self.trainable / 1e6:9.2f}M {self.flops_per_sample / 1e9:13.4f} "
            f"{self.peak_memory_bytes / 2**20:10.2f} {self.latency_ms_per_sample:10.3f}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the storages that torch ops return and that are still alive; ``peak`` is the highest sum.

    Each storage counts once (keyed by its data pointer, with the number of live tensors on it); tensors
    that existed before the mode was entered (weights, inputs) are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # data_ptr -> [nbytes, live tensors]

    def _release(self, ptr: int) -> None:
        entry = self._refs.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            self.live -= entry[0]
            del self._refs[ptr]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr == 0:
                continue
            entry = self._refs.get(ptr)
            if entry is None:
                if any(ptr == a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0] if isinstance(a, Tensor)):
                    continue  # an in-place op or view of an input that was never counted (a weight, an input)
                entry = self._refs[ptr] = [storage.nbytes(), 0]
                self.live += entry[0]
                self.peak = max(self.peak, self.live)
            entry[1] += 1
            weakref.finalize(t, self._release, ptr)
        return out


def peak_forward_memory(run: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes one call of ``run`` allocates above what was allocated before it (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            out = run()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del out
        return int(peak)
    counter = LiveTensorBytes()
    with torch.no_grad(), counter:
        out = run()
    del out
    return int(counter.peak)


def _opts(spec: Any) -> dict[str, Any]:
    return spec.options() if spec is not None else {}


def _image_size(options: Mapping[str, Any]) -> int:
    size = options.get("image_size", 64)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def _dummy_visual(spec: Any, batch: int, generator: torch.Generator) -> Tensor:
    """Images ``[B, 3, S, S]``, or clips ``[B, T, 3, S, S]`` for a video tower (frames at its frame encoder's size)."""
    options = _opts(spec)
    if spec is not None and spec.name in VIDEO_ENCODERS:
        frame = options.get("frame_encoder") or {}
        frames = min(DUMMY_VIDEO_FRAMES, int(options.get("max_frames", 32)))
        size = _image_size(frame if isinstance(frame, Mapping) else {})
        return torch.randn(batch, frames, 3, size, size, generator=generator)
    size = _image_size(options)
    return torch.randn(batch, 3, size, size, generator=generator)


def _dummy_text(spec: Any, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    length = max(2, int(_opts(spec).get("max_length", 32)) // 2)
    ids = torch.randint(5, 100, (batch, length), generator=generator)
    ids[:, 0] = 2
    return ids, torch.ones_like(ids)


def dummy_inputs(cfg: Any, batch: int, seed: int = 0) -> dict[str, Tensor]:
    """A batch dict for any model config, one input per encoder (keys as the data side fills them)."""
    g = torch.Generator().manual_seed(seed)
    encoders = getattr(cfg, "encoders", None)
    if encoders is None:  # image-text models: one visual tower, one text tower (or decoder)
        ids, mask = _dummy_text(getattr(cfg, "text", None) or getattr(cfg, "decoder", None), batch, g)
        return {"image": _dummy_visual(getattr(cfg, "vision", None), batch, g), "text_ids": ids, "text_mask": mask}
    inputs = model_inputs(cfg)
    out: dict[str, Tensor] = {}
    for modality, spec in encoders.items():
        options = _opts(spec)
        if spec.name in FEATURE_ENCODERS:
            if "input_dim" not in options:
                raise ConfigError(f"{modality} encoder 'features': the config needs input_dim to build dummy features")
            out[f"{modality}_features"] = torch.randn(batch, DUMMY_FEATURE_STEPS, int(options["input_dim"]), generator=g)
        elif spec.name in AUDIO_ENCODERS:
            out[modality] = torch.randn(batch, int(options.get("n_mels", 64)), DUMMY_AUDIO_FRAMES, generator=g) - 5.0
        elif spec.name in VIDEO_ENCODERS:
            out[inputs.video_key if modality == "video" and inputs.video_key else modality] = _dummy_visual(spec, batch, g)
        elif "max_length" in options or spec.name in ("text_transformer", "hf_text"):
            out["text_ids"], out["text_mask"] = _dummy_text(spec, batch, g)
        else:
            out[modality] = _dummy_visual(spec, batch, g)
    return out


def dummy_forward(model: nn.Module, cfg: Any, batch: int, device: torch.device | str = "cpu") -> Callable[[], Any]:
    """A no-argument forward of ``model`` on dummy inputs built from ``cfg`` (on ``device``)."""
    inputs = {k: v.to(device) for k, v in dummy_inputs(cfg, batch).items()}
    if cfg.type == "classifier":
        return lambda: model(inputs)
    return lambda: model(inputs["image"], inputs["text_ids"], inputs["text_mask"])


def measure(name: str, batch: int = 8, repeats: int = 5, vocab_size: int = 1000, device: str | torch.device = "cpu") -> ModelCost:
    from polymodal.models.factory import load_model_config

    if batch < 1 or repeats < 1:
        raise ConfigError(f"bench model: --batch and --repeats must be at least 1, got {batch} and {repeats}")
    dev = torch.device(device)
    cfg = load_model_config(name)
    if cfg.type == "pretrained":
        raise ConfigError(f"bench model: {name} is a pretrained (Hugging Face) config; bench builds shipped architectures only")
    ctx = BuildContext(vocab_size=vocab_size, answer_vocab=AnswerVocab(tuple(f"a{i}" for i in range(100))), load_weights=False)
    model = build_model(cfg, ctx).eval().to(dev)
    run = dummy_forward(model, cfg, batch, dev)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            run()
        flops = counter.get_total_flops() / batch
        run()  # warm-up
        peak = peak_forward_memory(run, dev)
        times = []
        for _ in range(repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            run()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t0)
    label = name if len(str(name)) <= 24 else "…" + str(name)[-23:]
    return ModelCost(label, params, trainable, flops, 1000 * statistics.median(times) / batch, peak, batch, str(dev))
