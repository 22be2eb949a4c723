"""Values that a block's generation step derives from its parameters alone (S4D's discretised
matrices, Mamba's A = -exp(A_log)), computed once per generation instead of once per sample."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn


def cached_for_steps(module: nn.Module, params: tuple[torch.Tensor, ...], compute: Callable):
    """``compute()``, kept in ``module._step_cache`` until one of ``params`` changes: in place
    (its version counter moves, as an optimizer step does) or by replacement (its storage moves,
    as ``load_state_dict`` or ``.to`` do). While autograd records, it is recomputed every call so
    that gradients flow through it."""
    if torch.is_grad_enabled():
        return compute()
    key = tuple((p._version, p.data_ptr()) for p in params)
    if module._step_cache is None or module._step_cache[0] != key:
        module._step_cache = (key, compute())
    return module._step_cache[1]
