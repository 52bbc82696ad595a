"""The training loop: one loop for every task, with checkpoints that lose nothing.

Why it looks the way it does:
- a NaN/inf loss stops the run *before* the bad step is applied, so the last checkpoint is good;
- checkpoints are written atomically and carry optimizer, scheduler, RNG and data position, so
  ``--resume`` continues mid-epoch with the very batches the killed run would have seen next;
- the data order comes from a seeded per-epoch permutation, never from the global RNG.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, NoReturn, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
import yaml
from tqdm import tqdm

from polymodal.atomic import write_text
from polymodal.config import CUDA_GRAPH_COMPILE_MODES, RunConfig
from polymodal.data.media import plan_to_dict
from polymodal.data.sample import Sample
from polymodal.data.tokenizers import TextTokenizer, load_tokenizer, train_tokenizer
from polymodal.errors import ConfigError, DataError, PolymodalError
from polymodal.hub.towers import image_settings_of, tower_paths
from polymodal.models.factory import build_model
from polymodal.tasks import Task, build_task
from polymodal.tasks.base import to_device
from polymodal.metrics.meteor import meteor_session
from polymodal.train.accumulation import LossWindow, MicroBatchWeights
from polymodal.train.data import (
    ResumableSampler,
    image_processor,
    load_split,
    make_loader,
    make_train_loader,
    media_plan,
    missing_image_policy,
    require,
)
from polymodal.train.resume_check import RUN_RECORD, check_data, check_settings, data_fingerprint, read_record, run_record
from polymodal.train.run_log import RunLog
from polymodal.train.schedule import build_adamw, load_keeping_kernel, lr_factor, warmup_cosine

log = logging.getLogger(__name__)


class TrainingDiverged(PolymodalError):
    """The loss became NaN or infinite; the run stopped before applying the step."""


class _NullLog:
    """What ranks other than 0 log to: nothing."""

    def write(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class TrainState:
    epoch: int = 0
    step_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    global_step: int = 0  # optimizer steps
    best: float | None = None
    bad_evals: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


_LAUNCHER_HINT = "torchrun sets it; unset WORLD_SIZE, RANK and LOCAL_RANK to train in one process"


def _env_int(name: str, default: int | None, minimum: int, below: int | None = None) -> int:
    """A launcher variable as a whole number in [minimum, below): torchrun sets them, but a job script
    or a stale shell can too, and torch's own errors (or a 30-minute rendezvous wait) do not say which."""
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise ConfigError(f"environment variable {name} is not set, but WORLD_SIZE={os.environ['WORLD_SIZE']} asks for a distributed run ({_LAUNCHER_HINT})")
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or value < minimum or (below is not None and value >= below):
        bounds = f"a whole number >= {minimum}" if below is None else f"a whole number in {minimum}..{below - 1}"
        raise ConfigError(f"environment variable {name}={raw!r}: expected {bounds} ({_LAUNCHER_HINT})")
    return value


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device is 'cuda' but no CUDA device is available")
        count = torch.cuda.device_count()
        return torch.device("cuda", _env_int("LOCAL_RANK", 0, 0, below=count))
    return torch.device("cpu")


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun (WORLD_SIZE > 1).

    NCCL on GPUs, gloo on CPUs: PyTorch's own stack, nothing home-made.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # started by the caller (a torch without distributed has no is_initialized)
        return dist.get_rank(), dist.get_world_size()
    world = _env_int("WORLD_SIZE", 1, 1)
    if world == 1:
        return 0, 1
    _env_int("RANK", None, 0, below=world)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ConfigError(f"environment variable {name} is not set, but WORLD_SIZE={world} asks for a distributed run ({_LAUNCHER_HINT})")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _coverage(verdicts: Sequence[tuple[str, bool, str] | None]) -> dict[str, tuple[int, list[str]]]:
    """``Task.targets_known``'s verdicts per kind of head vocabulary (answers, classes): (targets, the
    targets it does not know)."""
    totals: Counter[str] = Counter()
    missed: dict[str, list[str]] = {}
    for verdict in verdicts:
        if verdict is None:
            continue
        kind, known, target = verdict
        totals[kind] += 1
        unknown = missed.setdefault(kind, [])
        if not known:
            unknown.append(target)
    return {kind: (total, missed[kind]) for kind, total in totals.items()}


def read_logs(logs: Mapping[str, float | torch.Tensor]) -> dict[str, float]:
    """A step's logged values as numbers; the device tensors among them are read back in one transfer,
    and only on the steps that are logged (a read-back waits for the device to finish the step)."""
    tensors = [v.detach().float().reshape(()) for v in logs.values() if isinstance(v, torch.Tensor)]
    read = iter(torch.stack(tensors).tolist() if tensors else [])
    return {k: next(read) if isinstance(v, torch.Tensor) else float(v) for k, v in logs.items()}


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


class Trainer:
    def __init__(self, cfg: RunConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> None:
        if cfg.train is None:
            raise ConfigError("the config has no 'train' section (train: {task: ..., epochs: ...})")
        if cfg.model is None and cfg.init_from is None:
            raise ConfigError("the config has no 'model' section (model: {type: ..., vision: ..., text: ...}) and no init_from run to take one from")
        self.cfg = cfg
        self.settings = cfg.train
        self.run_dir = Path(cfg.output_dir)
        self.resume = resume
        self.overwrite = overwrite
        self.progress = progress
        self.device = pick_device(self.settings.device)
        self.rank, self.world = init_distributed(self.device)
        self.is_main = self.rank == 0
        self.progress = progress and self.is_main
        self.state = TrainState()
        self.init: Any = None  # the run init_from names (train/init_run.py), once setup has read it

    # ---------------------------------------------------------------- setup
    @property
    def pretrained(self) -> bool:
        """Fine-tuning a Hugging Face checkpoint (model type ``pretrained``) with its own preprocessing."""
        return self.cfg.model is not None and self.cfg.model.type == "pretrained"

    def _open_pretrained(self, task: Task) -> None:
        """Read the checkpoint's config, tokenizer and image processor; check it fits the task."""
        from polymodal.hub.loading import checkpoint_files, open_config, processors_of

        parts = open_config(self.cfg.model)
        arch = parts.arch
        if arch.task != task.name:
            raise ConfigError(
                f"train.task '{task.name}' needs a {task.model_type} model, but model.path {self.cfg.model.path!r} "
                f"is a {arch.hf_class} ({arch.model_type}; train it with task '{arch.task}')"
            )
        image = self.cfg.image
        ignored = image.model_fields_set - {"flip_prob"}  # everything but the flip would be silently ignored
        if ignored:
            raise ConfigError(
                f"image: {', '.join(sorted(ignored))} cannot be set when fine-tuning a pretrained checkpoint: it keeps the "
                f"preprocessing it was trained with ({parts.folder / 'preprocessor_config.json'}); only image.flip_prob applies"
            )
        self.hf_parts = parts
        self.hf_processors = processors_of(parts)
        self.hf_files = checkpoint_files(parts)
        if "max_length" in self.cfg.tokenizer.model_fields_set:
            self.hf_processors.max_length = self.cfg.tokenizer.max_length

    def _adopt_tower_preprocessing(self) -> None:
        """A pretrained vision tower brings its image size and normalisation, unless image: sets them."""
        vision = tower_paths(self.cfg.model).get("vision")
        if vision is None or self.cfg.image.model_fields_set & {"size", "mean", "std"}:
            return
        found = image_settings_of(vision)
        if found:
            log.info("image preprocessing from the vision tower %s: %s", vision, found)
            self.cfg = self.cfg.model_copy(update={"image": self.cfg.image.model_copy(update=found)})

    def _adopt_answer_labels(self) -> None:
        """A classifier-style VQA checkpoint (ViLT) keeps its own answer labels: the task uses them too,
        and says how many training questions they cover (the others teach nothing)."""
        vocab = getattr(self.model, "vocab", None)
        if self.task.name != "vqa" or vocab is None:
            return
        self.task.vocab = vocab
        total, missed = _coverage(self.task.targets_known(self.train_samples)).get("answers", (0, []))
        covered = total - len(missed)
        if not covered:
            raise DataError(
                f"none of the {total} training questions has an answer among the {len(vocab)} answer labels "
                f"of {self.cfg.model.path!r} (e.g. {', '.join(vocab.answers[:5])}); fine-tune on data it can answer"
            )
        log.info("%d of %d training questions have an answer among the checkpoint's %d labels; the rest teach nothing",
                 covered, total, len(vocab))

    def _earlier_run(self) -> bool:
        """A fresh run must not write over another run's checkpoints and log without being asked to:
        the old run's later steps would be left orphaned beside the new run's, its log.csv cut short.
        True when there is one to replace (with --overwrite, once the new run is set up)."""
        from polymodal.train.checkpoint import latest_checkpoint

        latest = None if self.resume else latest_checkpoint(self.run_dir)
        if latest is not None and not self.overwrite:
            raise ConfigError(
                f"output_dir {self.run_dir} already holds a run (latest checkpoint {latest.name}); "
                "continue it with --resume, start afresh over it with --overwrite, or set another output_dir"
            )
        return latest is not None

    def _remove_earlier_run(self) -> None:
        if self.is_main:
            for name in ("checkpoints", "tensorboard", "eval"):
                shutil.rmtree(self.run_dir / name, ignore_errors=True)
            for name in ("log.csv", "metrics.json"):
                (self.run_dir / name).unlink(missing_ok=True)
            log.info("--overwrite: removed the earlier run's checkpoints and logs from %s", self.run_dir)
        _barrier(self.world)

    def _resume_checkpoint(self) -> Path:
        from polymodal.train.checkpoint import latest_checkpoint

        path = latest_checkpoint(self.run_dir)
        if path is None:
            raise PolymodalError(f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}; start without --resume")
        return path

    def _inherited_targets_only(self, train: Sequence[Sample]) -> list[Sample]:
        """Heads inherited with init_from know only the answers or classes of the run they come from.
        Training samples with targets outside them are left out and counted (a batch of only such
        labels would give a NaN loss); answers or classes that cover no training target are an error."""
        where = f"init_from {str(self.cfg.init_from)!r}"
        verdicts = self.task.targets_known(train)
        for kind, (total, missed) in _coverage(verdicts).items():
            examples = ", ".join(map(repr, sorted(set(missed))[:5]))
            if len(missed) == total:
                raise DataError(
                    f"none of the {total} training targets is among the {kind} of {where} (e.g. {examples}); its heads cannot "
                    "learn them: start the model afresh, or fine-tune on data with its labels"
                )
            if missed:
                log.warning("%d of %d training samples have targets outside the %s of %s (e.g. %s); they are left out",
                            len(missed), total, kind, where, examples)
        return [s for s, v in zip(train, verdicts) if v is None or v[1]]

    @property
    def max_length(self) -> int:
        return self.hf_processors.max_length if self.pretrained else self.cfg.tokenizer.max_length

    def _context(self) -> Any:
        ctx = self.task.context(self.tokenizer)
        if self.pretrained:
            ctx.hf_parts, ctx.load_weights = self.hf_parts, self.checkpoint is None
        return ctx

    @property
    def assistant(self) -> bool:
        """A multimodal LLM (model type ``mllm``): its language model's own tokenizer, saved in each checkpoint."""
        return self.cfg.model is not None and self.cfg.model.type == "mllm"

    def _lm_files(self) -> dict[str, bytes]:
        """The LM's config and tokenizer (image token added) as checkpoint files under ``lm/``."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.tokenizer.save_pretrained(tmp)
            self.model.lm.config.save_pretrained(tmp)
            return {f"lm/{p.name}": p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}

    def _tokenizer(self, train: Sequence[Sample]) -> TextTokenizer:
        if self.init is not None:
            return self.init.tokenizer
        if self.pretrained:
            return self.hf_processors.tokenizer
        if self.assistant:
            from polymodal.models.mllm_build import load_lm_tokenizer

            return load_lm_tokenizer(self.cfg.model.lm, self.cfg.model.image_token)
        saved = self.run_dir / "tokenizer.json"
        if self.resume and saved.is_file():
            return load_tokenizer(saved)
        path = self.cfg.tokenizer.path or tower_paths(self.cfg.model).get("text")  # a pretrained text tower's own
        if path is not None:
            from polymodal.hub.zoo import CheckpointNotFound, resolve

            key = "tokenizer.path" if self.cfg.tokenizer.path is not None else "the text tower's path"
            try:
                return load_tokenizer(resolve(path))
            except (CheckpointNotFound, DataError) as e:  # not found, not a tokenizer: say which setting pointed there
                raise type(e)(f"{key}: {e}") from None
        texts = [s.text for s in train if s.text] + [a for s in train for a in s.answers]
        return train_tokenizer(texts, kind=self.cfg.tokenizer.kind, vocab_size=self.cfg.tokenizer.vocab_size)

    def _model_config(self, task: Task) -> Any:
        overrides = task.model_overrides()
        if self.cfg.model.type == "classifier" and self.cfg.missing_modality == "learned":
            overrides["missing"] = "learned"  # absent modalities get a learned embedding, not zeros
        return self.cfg.model.model_copy(update=overrides)

    def _config_tree(self) -> dict[str, Any]:
        """The resolved config as plain JSON values: what config.yaml and each checkpoint's run.json hold."""
        return json.loads(self.cfg.model_dump_json())

    def _note_resumed_schedule(self) -> None:
        """Say what a resume that trains longer or shorter, or on other ranks, does to the saved run."""
        saved, st, o = self.saved_run, self.state, self.cfg.optim
        total, world = saved.get("total_steps"), saved.get("world_size")
        if isinstance(total, int) and total != self.total_steps:
            # the first resumed step uses the restored learning rate; the new schedule takes over after it
            before = o.lr * lr_factor(st.global_step + 1, o.warmup_steps, total, o.min_lr_ratio)
            after = o.lr * lr_factor(st.global_step + 1, o.warmup_steps, self.total_steps, o.min_lr_ratio)
            cause = (f"{world} processes then, {self.world} now, so the steps per epoch changed"
                     if isinstance(world, int) and world != self.world else "train.epochs or train.max_steps changed")
            log.warning("--resume: the learning-rate schedule now ends at step %d, not %d (%s); from step %d the learning "
                        "rate is %.3g instead of %.3g", self.total_steps, total, cause, st.global_step + 2, after, before)
        if isinstance(world, int) and world != self.world and st.step_in_epoch:
            log.warning("--resume: the run was saved with %d processes and now has %d, mid-epoch: the rest of epoch %d is "
                        "taken from the same position of each process's new share, so some of its samples may be seen twice "
                        "or not at all (from the next epoch on, every sample is seen once)", world, self.world, st.epoch + 1)

    def setup(self) -> None:
        s = self.settings
        seed_everything(self.cfg.seed)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        replace = self._earlier_run()
        resume_from = self._resume_checkpoint() if self.resume else None
        self.init = None
        if self.cfg.init_from is not None:  # its model, tokenizer and input settings come with its weights
            from polymodal.train.init_run import open_init_run

            # a resumed run reads them from its own checkpoint, which holds the same and outlives the first run
            self.cfg, self.init = open_init_run(self.cfg, resume_from)
        else:
            self._adopt_tower_preprocessing()
        self.saved_run: dict[str, Any] = {}
        if resume_from is not None:  # before any data is read: a changed setting is refused at once
            self.saved_run = read_record(resume_from, self.run_dir)
            check_settings(self.saved_run.get("config", {}), self._config_tree(), self.run_dir)
        placeholder = build_task(s.task, None, self.cfg.tokenizer.max_length)
        if self.pretrained:
            self._open_pretrained(placeholder)
        elif self.cfg.model.type != placeholder.model_type:  # fail before reading any data
            raise ConfigError(f"train.task '{s.task}' needs a model of type '{placeholder.model_type}', but model.type is '{self.cfg.model.type}'")
        train = load_split(self.cfg.data, "train", placeholder)
        require(train, "train", placeholder)
        self.tokenizer = self._tokenizer(train)
        if self.cfg.tokenizer.padding == "max_length" and self.tokenizer is not None:
            if self.assistant:
                raise ConfigError(
                    "tokenizer.padding: 'max_length' pads polymodal's and Hugging Face towers' texts; an assistant "
                    "(task mllm) lays out its conversations itself. Remove the key"
                )
            self.tokenizer.pad_to_max_length = True
        self.task = build_task(s.task, self.tokenizer, self.max_length, s.questions_per_image, blind=s.blind)
        if self.init is not None:
            self.task.load_state(self.init.task_state_for(s.task))  # the answers or classes its heads were trained on
        self.checkpoint = None
        if resume_from is not None:
            from polymodal.train.checkpoint import load_checkpoint

            self.checkpoint = load_checkpoint(resume_from)
            self.task.load_state(self.checkpoint.processors.get("task_state", {}))
        self.task.prepare(train)
        if self.init is not None:
            train = self._inherited_targets_only(train)
        self.train_samples = train
        self.train_items = self.task.train_items(train)
        self.data_fingerprint = data_fingerprint(train, len(self.train_items))
        check_data(self.saved_run.get("train_data"), self.data_fingerprint, self.run_dir)
        self.val_samples = load_split(self.cfg.data, "val", self.task)
        self.test_samples = load_split(self.cfg.data, "test", self.task)
        for split, samples in (("val", self.val_samples), ("test", self.test_samples)):
            if samples:  # before training: found at the first validation, the epoch's checkpoint would be lost
                self.task.check_eval_targets(samples, split)
        self.model_config = self._model_config(self.task)
        self.model = build_model(self.model_config, self._context()).to(self.device)
        if self.pretrained:
            self._adopt_answer_labels()
        if self.checkpoint is not None:
            self.checkpoint.load_model_state(self.model)  # before sharding: the file holds full weights
        elif self.init is not None:
            self.init.load_weights(self.model)
            log.info("weights from %s", self.init.checkpoint.path)
        if s.bf16_residual:
            self._keep_bf16_residual()
        self.fsdp = self.world > 1 and s.distributed == "fsdp"
        self.eval_model = self.model
        if self.fsdp:
            from polymodal.train.fsdp import shard

            # rank 0 keeps an unsharded copy: checkpoints are written from it and evaluation runs on it
            self.eval_model = build_model(self.model_config, self._context()).to(self.device) if self.is_main else None
            shard(self.model, self.device, self.world)
        if replace:  # only now, so that a config or data error above leaves the earlier run whole
            self._remove_earlier_run()
        if self.is_main:
            if not self.pretrained and not self.assistant:  # those save their tokenizer inside each checkpoint
                self.tokenizer.save(self.run_dir)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self._config_tree(), sort_keys=False))

        o = self.cfg.optim
        self.optimizer = build_adamw(self.model, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas, eps=o.eps, sharded=self.fsdp)
        self.sampler = ResumableSampler(len(self.train_items), self.cfg.seed, rank=self.rank, world_size=self.world)
        self.train_loader: DataLoader | None = None
        # kept across epochs: its provisional unit (the last step's mean micro-batch) carries over
        self.micro_batch_weights = MicroBatchWeights(s.accumulation, self.world)
        self.micro_per_epoch = micro_per_epoch = math.ceil(self.sampler.shard_size / s.batch_size)
        self.steps_per_epoch = math.ceil(micro_per_epoch / s.accumulation)
        self.total_steps = min(s.max_steps or math.inf, self.steps_per_epoch * s.epochs)
        self.scheduler = warmup_cosine(self.optimizer, o.warmup_steps, self.total_steps, o.min_lr_ratio)
        # what a later --resume compares itself with: fixed once set up, so built once, not at every save
        self.run_record = run_record(self._config_tree(), self.data_fingerprint, self.total_steps, self.world)
        self.scaler = torch.amp.GradScaler("cuda") if s.precision == "fp16" and self.device.type == "cuda" else None
        if self.checkpoint is not None:
            checkpoint = self.checkpoint
            restored = load_keeping_kernel(self.optimizer, lambda: checkpoint.load_training_state(self._optimizer_io(), self.scheduler, self.scaler))
            self.state = TrainState(**restored)
            log.info("resumed from %s at epoch %d, step %d", self.checkpoint.path, self.state.epoch, self.state.global_step)
            self._note_resumed_schedule()
        wrapped: torch.nn.Module = self.model
        if self.world > 1 and not self.fsdp:
            from torch.nn.parallel import DistributedDataParallel

            wrapped = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.forward_model = torch.compile(wrapped, mode=None if s.compile_mode == "default" else s.compile_mode) if s.compile else wrapped
        if s.compile and self.device.type == "cpu":
            log.warning("train.compile on a CPU: polymodal's eager path (packed attention, fused kernels) is usually faster there "
                        "(the quickstart model trains compiled at about 0.8x its eager speed, benchmarks/RESULTS.md); compile is for GPUs%s",
                        "" if s.compile_mode not in CUDA_GRAPH_COMPILE_MODES else f", and '{s.compile_mode}' records CUDA graphs only on a GPU")
        self.full_batch_accumulation = self._full_batch_accumulation()
        # CUDA graph modes replay into the same output memory: each step is declared before its forward
        self._cuda_graphs = s.compile and s.compile_mode in CUDA_GRAPH_COMPILE_MODES
        self._no_sync = self._sharded_no_sync if self.fsdp else getattr(wrapped, "no_sync", None)
        base = self.init.image if self.init is not None else None  # the image processor the weights were trained with
        if self.pretrained:
            self.train_processor = self.eval_processor = self.hf_processors.image
        else:
            self.train_processor = image_processor(self.cfg.image, train=True, seed=self.cfg.seed + self.rank, base=base)
            self.eval_processor = image_processor(self.cfg.image, train=False, base=base)
        self.train_media = media_plan(self.cfg, self.model_config, train=True, image_base=base)
        self.eval_media = media_plan(self.cfg, self.model_config, train=False, image_base=base)
        self.missing_image = missing_image_policy(self.cfg, self.model_config)
        if self.missing_image is not None and not self.assistant:  # an assistant's conversations may be text-only
            self._check_images(self.train_samples, "train")
        self.task.attach(self.model, self.model_config, self.eval_processor)
        self.extra_files = self.hf_files if self.pretrained else self._lm_files() if self.assistant else None

    def _check_images(self, samples: Sequence[Sample], split: str) -> None:
        """A model that reads images, given samples without any, would skip them all (or learn from blanks)
        without a word until the run ended with nothing trained: a misspelt image column, say."""
        without = sum(not s.has_image for s in samples)
        if not without:
            return
        if without == len(samples):
            raise DataError(
                f"data.{split}: none of the {len(samples)} samples has an image, and the {self.model_config.type} model reads one: "
                "check the source's image field (image_field / image column) or its image folder"
            )
        log.warning(
            "data.%s: %d of %d samples have no image; missing_modality: %s %s", split, without, len(samples), self.missing_image,
            "skips them" if self.missing_image == "skip" else "gives them a stand-in, flagged absent",
        )

    def _keep_bf16_residual(self) -> None:
        from polymodal.modules.transformer import set_bf16_residual

        stacks = set_bf16_residual(self.model)
        if not stacks:
            raise ConfigError(
                "train.bf16_residual: this model has no polymodal transformer stack to keep in bf16 "
                f"(model type {self.model_config.type!r}); remove the option"
            )
        log.info("train.bf16_residual: %d transformer stacks keep their residual stream in bf16", stacks)

    def eval_loader(self, samples: Sequence[Sample], with_images: bool = True):
        return make_loader(
            samples, self.eval_processor if with_images else None, self.tokenizer, self.max_length,
            self.settings.eval_batch_size, self.settings.num_workers, seed=self.cfg.seed, media=self.eval_media,
            missing_image=self.missing_image if with_images else None,
        )

    # ---------------------------------------------------------------- checkpoints
    def processors(self) -> dict[str, Any]:
        common = {"text_max_length": self.max_length, "task": self.task.name, "task_state": self.task.state()}
        if self.missing_image is not None:  # evaluation treats a sample without an image as training did
            common["missing_image"] = self.missing_image
        if self.pretrained:  # the checkpoint's own processors, stored in the checkpoint's hf/ folder
            return common | {"hf_folder": "hf", "model_type": self.hf_parts.arch.model_type}
        media = {"media": plan_to_dict(self.eval_media)} if self.eval_media is not None else {}
        lm = {"lm_folder": "lm"} if self.assistant else {}
        return {"image": self.eval_processor.to_dict()} | media | lm | common

    def _optimizer_io(self) -> Any:
        """What checkpoints read and restore the optimizer through (its full state under FSDP)."""
        if not self.fsdp:
            return self.optimizer
        from polymodal.train.fsdp import FullOptimizerState

        return FullOptimizerState(self.model, self.optimizer)

    def _sync_eval_model(self) -> None:
        """Under FSDP, gather the full weights into rank 0's unsharded copy (every rank must call this)."""
        if not self.fsdp:
            return
        from polymodal.train.fsdp import full_model_state

        state = full_model_state(self.model)
        if self.is_main:
            self.eval_model.load_state_dict(state, strict=False)  # type: ignore[union-attr]

    def save(self) -> Path | None:
        """Rank 0 writes; every rank waits for it, so no rank runs ahead of a checkpoint."""
        from polymodal.train.checkpoint import save_checkpoint

        optimizer: Any = self.optimizer
        if self.fsdp:  # gathering is collective: every rank takes part before rank 0 writes
            from polymodal.train.fsdp import GatheredState

            self._sync_eval_model()
            optimizer = GatheredState(self._optimizer_io().state_dict())
        if not self.is_main:
            _barrier(self.world)
            return None
        st = self.state
        train_state = {
            "epoch": st.epoch, "step_in_epoch": st.step_in_epoch, "global_step": st.global_step,
            "best": st.best, "bad_evals": st.bad_evals, "history": st.history,
        }
        path = save_checkpoint(
            self.run_dir, model=self.eval_model, model_config=self.model_config.model_dump(), global_step=st.global_step,
            processors=self.processors(), tokenizer=None if self.pretrained or self.assistant else self.tokenizer, optimizer=optimizer,
            scheduler=self.scheduler, scaler=self.scaler, train_state=train_state, keep_last=self.settings.keep_checkpoints,
            extra_files={**(self.extra_files or {}), RUN_RECORD: self.run_record},
        )
        _barrier(self.world)
        return path

    # ---------------------------------------------------------------- loop
    def _autocast(self):
        enabled = self.settings.precision in ("bf16", "fp16")
        dtype = torch.bfloat16 if self.settings.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype, enabled=enabled)

    def _train_epoch(self, run_log: RunLog) -> bool:
        """One epoch from the saved position; returns False when max_steps was reached."""
        s, st = self.settings, self.state
        self.sampler.set_position(st.epoch, st.step_in_epoch * s.batch_size)
        if self.train_loader is None:  # built once: its workers persist from epoch to epoch
            self.train_loader = make_train_loader(
                self.train_items, self.train_processor, self.tokenizer, self.max_length, s.batch_size,
                s.num_workers, self.sampler, self.cfg.seed, flip_prob=self.cfg.image.flip_prob, task=self.task, media=self.train_media,
                missing_image=self.missing_image,
            )
        loader = self.train_loader
        micro_total = self.micro_per_epoch
        bar = self.bar
        bar.set_description(f"epoch {st.epoch + 1}/{self.total_epochs}")
        self.model.train()
        window = LossWindow(self.world)  # the losses since the last log line, with the items they average
        skipped = 0
        filled: Counter[str] = Counter()  # samples zero-filled for a missing modality, per input
        t0, seen = time.perf_counter(), 0
        # seconds blocked on the loader vs seconds in the step itself, per log window: a data-bound run
        # shows data_seconds near step time; one that never waits shows it near zero
        waited, computed, timed = 0.0, 0.0, 0
        pending: list[dict[str, Any]] = []  # micro-batches of the current step, with full-batch accumulation
        backed = 0  # backward passes since the last optimizer step
        weighing = self.micro_batch_weights
        batches = iter(loader)
        while True:
            t_wait = time.perf_counter()
            batch = next(batches, None)
            t_got = time.perf_counter()
            waited += t_got - t_wait
            if batch is None:
                break
            skipped += batch["num_skipped"]
            filled.update(batch.get("num_missing") or {})
            st.step_in_epoch += 1
            # empty when every sample of this batch was unreadable; under DDP/FSDP a batch empty on one rank is
            # skipped on all, or the others would wait in the forward's collectives for a rank that never joins
            if not self._every_rank(bool(batch["samples"])) and batch["samples"]:
                skipped += len(batch["samples"])
                batch["samples"] = []
            if batch["samples"]:
                batch = to_device(batch, self.device)
                seen += len(batch["samples"])
                if self.full_batch_accumulation:
                    pending.append(batch)  # scored together at the step: every pair is a negative
                else:
                    if self._cuda_graphs:
                        torch.compiler.cudagraph_mark_step_begin()
                    with self._autocast():
                        out = self.task.loss(self.forward_model, batch)
                    items = float(len(batch["samples"]) if out.weight is None else out.weight)
                    # ranks must agree on a bad loss before the backward's collectives; one process checks the
                    # value read after the backward, so the backward is queued without waiting for the forward
                    items_all = self._check_finite(out.loss, items) if self.world > 1 else items
                    over_ranks = out.loss_over_ranks  # token means divide by every rank's tokens already
                    scaled = weighing.weigh(out.loss, items, items_all, over_ranks)
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                    with torch.no_grad():  # .tolist() waits for the device, so the step time below is real on GPUs too
                        shared = torch.zeros_like(out.loss) if over_ranks is None else over_ranks
                        loss_value, shared_value = torch.stack((out.loss.float().reshape(()), shared.float().reshape(()))).tolist()
                    if not math.isfinite(loss_value):  # gradients are in .grad, but the step is not applied
                        self._diverged(loss_value)
                    window.add(loss_value, items, over_ranks=shared_value, items_all_ranks=items_all)
                    backed += 1
            at_step = not st.step_in_epoch % s.accumulation or st.step_in_epoch >= micro_total
            if pending and at_step:
                with self._autocast():
                    out = self.task.accumulated_loss(
                        self.forward_model, self.model, pending, scale_loss=self.scaler.scale if self.scaler else None, no_sync=self._no_sync,
                    )
                pending = []
                self._check_finite(out.loss)  # gradients are in .grad, but the step is not applied
                window.add(out.loss.item(), 1.0)
                backed += 1
            if not at_step or not backed:
                computed += time.perf_counter() - t_got
                continue
            self._optimizer_step(weighing.correction())
            backed = 0
            computed += time.perf_counter() - t_got
            timed += 1
            st.global_step += 1
            bar.update()
            if st.global_step % s.log_every == 0:
                loss = window.mean(self.device)  # a collective: every rank takes part
                if self.is_main:
                    rate = seen / max(1e-9, time.perf_counter() - t0)
                    values = {"loss": loss, "lr": self.scheduler.get_last_lr()[0], "samples_per_s": rate} | read_logs(out.logs)
                    # mean seconds per optimizer step over the window: waiting for data, and computing
                    values |= {"data_seconds": waited / timed, "step_seconds": computed / timed}
                    run_log.write(st.global_step, st.epoch, "train", values)
                    bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}")
                waited, computed, timed = 0.0, 0.0, 0
            if st.global_step % s.checkpoint_every == 0:
                self.save()
            if st.global_step >= self.total_steps:
                break
        if skipped:
            log.warning("epoch %d: %d samples skipped (unreadable or missing inputs, or dropped with another rank's empty batch); see the warnings above", st.epoch + 1, skipped)
        if filled:
            policy = self.cfg.missing_modality
            log.warning("epoch %d: inputs missing and filled (missing_modality: %s): %s", st.epoch + 1, policy, dict(filled))
        return st.global_step < self.total_steps

    def _check_finite(self, loss: torch.Tensor, items: float = 0.0) -> float:
        """Stops the run if the loss is not finite on some rank; returns ``items`` summed over the ranks.

        One collective does both: the item count weighs the micro-batch within its optimizer step.
        """
        finite, items = self._all_finite(loss, items)
        if finite:
            return items
        self._diverged(loss.item())

    def _diverged(self, loss: float) -> NoReturn:
        st = self.state
        last = self.run_dir / "checkpoints" / "latest"
        where = last.read_text().strip() if last.is_file() else "none written yet"
        raise TrainingDiverged(
            f"loss became {loss} at optimizer step {st.global_step} (epoch {st.epoch + 1}); the step was not "
            f"applied. Last good checkpoint: {where}. Lower optim.lr, keep optim.grad_clip on, or check the data."
        )

    @contextlib.contextmanager
    def _sharded_no_sync(self) -> Iterator[None]:
        """FSDP's counterpart of DDP's ``no_sync``: keep gradients local until the last micro-batch."""
        self.model.set_requires_gradient_sync(False)  # type: ignore[operator]
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)  # type: ignore[operator]

    def _full_batch_accumulation(self) -> bool:
        """Whether accumulated micro-batches are scored as one batch (see ``train.contrastive_accumulation``)."""
        s = self.settings
        if s.accumulation == 1 and s.contrastive_accumulation is not None:
            log.warning("train.contrastive_accumulation: %s has no effect with train.accumulation: 1 (one micro-batch per step)", s.contrastive_accumulation)
        if s.accumulation == 1 or s.contrastive_accumulation == "micro_batch":
            return False
        if self.task.keeps_negatives_across(self.model):
            log.info("accumulation: %d micro-batches of %d are scored as one contrastive batch of %d (gradient caching)",
                     s.accumulation, s.batch_size, s.accumulation * s.batch_size * self.world)
            return True
        if s.contrastive_accumulation == "full_batch":
            raise ConfigError(
                f"train.contrastive_accumulation: 'full_batch' needs a contrastive dual encoder (task retrieval with a dual_encoder, "
                f"CLIP or SigLIP model); task '{self.task.name}' with model type '{self.cfg.model.type}' sums micro-batch losses. "
                "Remove the key or set it to 'micro_batch'"
            )
        if self.task.name in ("retrieval", "multitask"):
            log.warning("accumulation: this %s model's contrastive loss sees only its micro-batch's negatives (%d, not %d)",
                        self.task.name, s.batch_size, s.accumulation * s.batch_size)
        return False

    def _all_finite(self, loss: torch.Tensor, items: float = 0.0) -> tuple[bool, float]:
        """Whether the loss is finite on every rank (they must agree, or one rank stops while the others
        wait for it forever), and ``items`` summed over the ranks."""
        if self.world == 1:
            return bool(torch.isfinite(loss.detach())), float(items)
        import torch.distributed as dist

        totals = torch.stack([(~torch.isfinite(loss.detach())).float().reshape(()), torch.tensor(float(items), device=loss.device)])
        dist.all_reduce(totals)
        bad, items = totals.tolist()
        return bad == 0, items

    def _every_rank(self, flag: bool | torch.Tensor) -> bool:
        """True when ``flag`` holds on every rank (a collective: every rank must call it at the same point)."""
        if self.world == 1:
            return bool(flag)
        import torch.distributed as dist

        agreed = torch.as_tensor(flag, dtype=torch.float32, device=self.device).reshape(1)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
        return bool(agreed.item())

    def _optimizer_step(self, grad_factor: float = 1.0) -> None:
        clip = self.cfg.optim.grad_clip
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if grad_factor != 1.0:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            torch._foreach_mul_(grads, grad_factor)
        if clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def evaluate(self, samples: Sequence[Sample]) -> Any:
        if self.settings.max_eval_samples:
            samples = samples[: self.settings.max_eval_samples]
        model = self.eval_model
        model.eval()
        # fp32 whatever train.precision is: bf16 similarities cost several points of R@1 (measured: 0.369 vs
        # 0.402), and metrics must not depend on how the model was trained. METEOR's jar (seconds to start)
        # starts now, while captions are generated, and stops with the evaluation (it is not kept in training)
        with torch.no_grad(), meteor_session() if self.task.scores_captions else contextlib.nullcontext():
            return self.task.evaluate(model, samples, lambda ss, img=True: self.eval_loader(ss, img), self.device)

    def _validate(self, run_log: Any) -> tuple[bool, bool]:
        """Rank 0 evaluates (the others wait); the early-stopping verdict is shared with every rank."""
        verdict = torch.zeros(2)
        self._sync_eval_model()
        if self.is_main:
            result = self.evaluate(self.val_samples)
            run_log.write(self.state.global_step, self.state.epoch, "val", result.metrics)
            self.state.history.append({"step": self.state.global_step, "epoch": self.state.epoch, "val": result.metrics})
            verdict = torch.tensor([float(x) for x in self._early_stop(result.metrics)])
        if self.world > 1:
            import torch.distributed as dist

            dist.broadcast(verdict, src=0)
        return bool(verdict[0]), bool(verdict[1])

    def _early_stop(self, metrics: dict[str, float]) -> tuple[bool, bool]:
        """(is_best, should_stop) for the configured metric."""
        es = self.settings.early_stopping
        if es is None:
            return True, False
        if es.metric not in metrics:
            raise ConfigError(f"train.early_stopping.metric '{es.metric}' is not among the validation metrics {sorted(metrics)}")
        value, st = metrics[es.metric], self.state
        better = st.best is None or (value > st.best if es.mode == "max" else value < st.best)
        if better:
            st.best, st.bad_evals = value, 0
        else:
            st.bad_evals += 1
        return better, st.bad_evals >= es.patience

    def fit(self) -> dict[str, Any]:
        from polymodal.train.checkpoint import mark_best

        self.setup()
        s, st = self.settings, self.state
        run_log = RunLog(self.run_dir, self.state.global_step if self.resume else None) if self.is_main else _NullLog()
        started = time.perf_counter()
        # one bar over the whole run's optimizer steps, so its rate and ETA are the run's
        self.total_epochs = min(s.epochs, math.ceil(self.total_steps / self.steps_per_epoch))
        self.bar = tqdm(total=self.total_steps, initial=st.global_step, unit="step", disable=not self.progress, dynamic_ncols=True)
        try:
            while st.epoch < s.epochs:
                more = self._train_epoch(run_log)
                finished_epoch = st.step_in_epoch >= self.micro_per_epoch
                if finished_epoch:
                    st.epoch += 1
                    st.step_in_epoch = 0
                stop = not more
                if self.val_samples and (finished_epoch and st.epoch % s.eval_every_epochs == 0 or stop):
                    is_best, stop_early = self._validate(run_log)
                    path = self.save()
                    if is_best and path is not None:
                        mark_best(self.run_dir, path)
                    if stop_early:
                        log.info("early stopping: %s did not improve for %d evaluations", s.early_stopping.metric, s.early_stopping.patience)  # type: ignore[union-attr]
                        break
                else:
                    path = self.save()
                    if path is not None:
                        mark_best(self.run_dir, path)
                if stop:
                    break
        finally:
            self.bar.close()
            run_log.close()
        summary: dict[str, Any] = {"steps": st.global_step, "epochs": st.epoch, "train_seconds": time.perf_counter() - started, "history": st.history}
        if self.test_samples:
            self._sync_eval_model()
        if not self.is_main:
            return summary
        if self.test_samples:
            result = self.evaluate(self.test_samples)
            summary["test"] = result.metrics
            summary["test_details"] = {k: v for k, v in result.details.items() if k != "examples"}
        write_text(self.run_dir / "metrics.json", json.dumps(summary, indent=1, default=float))
        return summary
