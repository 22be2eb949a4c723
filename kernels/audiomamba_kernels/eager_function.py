"""Kernels with a gradient, called two ways: as PyTorch custom operators, which torch.compile keeps
in its graph as single calls, and as a plain autograd Function in eager code. The custom operator's
dispatch runs several Python layers per call; the plain Function skips them (about 0.12 ms of
host time per forward + backward of a scan on the H200 machine, against 0.8 ms of GPU time at the
center stage).
"""
from __future__ import annotations

from typing import Callable

import torch


def plain_function(name: str, forward: Callable, setup_context: Callable, backward: Callable) -> Callable:
    """The ``apply`` of an autograd Function named ``name``: ``forward(*inputs)`` gives the output,
    ``setup_context(ctx, inputs, output)`` saves what ``backward(ctx, *output_grads)`` needs (the
    contract of ``torch.library.register_autograd``, so an operator's pieces serve both)."""

    def run_forward(ctx, *inputs):  # not a separate setup_context: apply would then bind the arguments
        output = forward(*inputs)  # through inspect.signature, about 50 us a call
        setup_context(ctx, inputs, output)
        return output

    function = type(name, (torch.autograd.Function,),
                    {"forward": staticmethod(run_forward), "backward": staticmethod(backward)})
    return function.apply


def for_caller(custom_operator: Callable, plain: Callable) -> Callable:
    """The custom operator where torch.compile is tracing, else the plain Function."""
    return custom_operator if torch.compiler.is_compiling() else plain
