"""FSDP (PyTorch's ``fully_shard``, FSDP2) for the trainer: shard, and gather full states for checkpoints.

Parameters, gradients and optimizer state are sharded across ranks during training. Checkpoints stay
the same plain, unsharded files as single-process runs (so ``load_model`` and ``polymodal eval`` read
them anywhere): every rank takes part in gathering the full state, rank 0 keeps it on the CPU, loads it
into an unsharded copy of the model and writes that copy. The same copy is what rank 0 evaluates, since
a sharded model cannot run forward on one rank alone.

The whole model is one shard unit: the world's multi-task model calls its shared towers several times
per step, and one unit keeps that simple and correct; per-block units are a later refinement.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def shard(model: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """Shard ``model`` in place over all ranks (NCCL on GPUs, gloo on CPUs) and return it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    fully_shard(model, mesh=mesh)
    return model


def _options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights on rank 0 (empty on the others). Collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


class FullOptimizerState:
    """The optimizer seen through its full (unsharded, name-keyed) state, with the usual methods.

    ``state_dict`` gathers (collective; call it on every rank before rank 0 saves); ``load_state_dict``
    takes the full state read from a checkpoint and keeps this rank's shard (every rank calls it).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, self.optimizer, options=_options())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.model, self.optimizer, state, options=StateDictOptions(full_state_dict=True))


class GatheredState:
    """A state gathered beforehand, handed to ``save_checkpoint`` as if it were the optimizer."""

    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        return self._state
