"""Whether a module's ``__call__`` does more than its ``forward``.

Shortcuts that skip work (an encoder's ``forward_pooled``, a stack's last block run for one token) call
methods past a module's ``__call__``; they must not when hooks are registered, since those would not run.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules import module as module_state


def has_forward_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` would run forward (pre-)hooks, its own or global ones."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module_state._global_forward_hooks
        or module_state._global_forward_pre_hooks
    )
