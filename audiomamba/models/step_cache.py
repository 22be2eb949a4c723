"""Values that a generation step derives from parameters alone (S4D's discretised matrices,
Mamba's A = -exp(A_log), a stage's stacked Mamba weights), computed once per generation instead
of once per sample."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn


def cached_for_steps(module: nn.Module, compute: Callable, parameters: list | None = None,
                     attribute: str = "_step_cache"):
    """``compute()``, kept in ``module._step_cache`` (or another ``attribute``) until one of the
    module's own parameters (or of ``parameters``, when given) changes: in place (its version
    counter moves, as an optimizer step does) or by replacement (its storage moves, as
    ``load_state_dict`` or ``.to`` do). While autograd records, it is recomputed every call so that
    gradients flow through it; so it is for parameters made under ``torch.inference_mode``, which
    have no version counter to watch.

    The parameters are read from ``module._parameters`` rather than by name: each named access
    goes through ``nn.Module.__getattr__`` (about 0.4 us), which a batch-1 CPU step cannot spare."""
    if torch.is_grad_enabled():
        return compute()
    try:
        key = [(p._version, p.data_ptr()) for p in (module._parameters.values() if parameters is None else parameters)]
    except RuntimeError:  # "Inference tensors do not track version counter"
        return compute()
    cached = getattr(module, attribute)
    if cached is None or cached[0] != key:
        cached = (key, compute())
        setattr(module, attribute, cached)
    return cached[1]
