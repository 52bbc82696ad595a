"""Counting the places a step reads a tensor back to the host.

On a GPU each read-back (``.item()``, ``float()``, ``bool()`` of a tensor, ``nonzero``, a boolean index)
waits until the device has run everything queued before it, so the host stops queueing the rest of the
step. On a CPU nothing waits, but the same ops run: counting them here tells what a GPU step would wait on.
"""

from __future__ import annotations

import collections
import traceback
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_READ_BACK = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default", "aten.equal.default"}


def _has_bool_index(args: tuple[Any, ...]) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in indices)


class ReadBacks(TorchDispatchMode):
    """``with ReadBacks() as seen: ...`` then ``seen.sites``: (op, the innermost polymodal source line) -> count."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: collections.Counter[tuple[str, str]] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        name = str(func)
        if name in _READ_BACK or (name.startswith(("aten.index.", "aten.index_put")) and _has_bool_index(args)):
            ours = [f for f in traceback.extract_stack() if "/polymodal/" in f.filename]
            site = f"{ours[-1].filename.rsplit('/polymodal/', 1)[-1]}:{ours[-1].lineno}" if ours else "(autograd)"
            self.sites[(name.split(".")[1], site)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.sites.values())
