"""Values that a generation step derives from parameters alone (S4D's discretised matrices,
Mamba's A = -exp(A_log), a stage's stacked Mamba weights), computed once per generation instead
of once per sample."""
from __future__ import annotations

import contextlib
import threading
from typing import Callable

import torch
import torch.nn as nn

_generation = threading.local()  # .marker: the generation running in this thread (``parameters_fixed``)


@contextlib.contextmanager
def parameters_fixed():
    """A generation in this thread, during which no parameter changes: each cache checks its
    parameters on its first use inside, and from then on returns its value unchecked. The check
    is a version counter and a pointer a parameter, about 1 us a call, some 4% of a batch-1 CPU
    step. Outside (or in other threads) every call checks."""
    before = getattr(_generation, "marker", None)
    _generation.marker = object()
    try:
        yield
    finally:
        _generation.marker = before


def cached_for_steps(module: nn.Module, compute: Callable, parameters: list | None = None,
                     attribute: str = "_step_cache"):
    """``compute()``, kept in ``module._step_cache`` (or another ``attribute``) until one of the
    module's own parameters (or of ``parameters``, when given) changes: in place (its version
    counter moves, as an optimizer step does) or by replacement (its storage moves, as
    ``load_state_dict`` or ``.to`` do). While autograd records, it is recomputed every call so that
    gradients flow through it; so it is for parameters made under ``torch.inference_mode``, which
    have no version counter to watch. Inside ``parameters_fixed`` the check runs once.

    The parameters are read from ``module._parameters`` rather than by name: each named access
    goes through ``nn.Module.__getattr__`` (about 0.4 us), which a batch-1 CPU step cannot spare."""
    if torch.is_grad_enabled():
        return compute()
    cached = getattr(module, attribute)
    marker = getattr(_generation, "marker", None)
    if marker is not None and cached is not None and cached[2] is marker:
        return cached[1]
    try:
        key = [(p._version, p.data_ptr()) for p in (module._parameters.values() if parameters is None else parameters)]
    except RuntimeError:  # "Inference tensors do not track version counter"
        return compute()
    value = compute() if cached is None or cached[0] != key else cached[1]
    setattr(module, attribute, (key, value, marker))
    return value
