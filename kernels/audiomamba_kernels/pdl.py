"""Programmatic dependent launch (PDL, Hopper and later) for the generation kernels.

A generation step is a chain of small kernels of a few microseconds each, and much of each is
the launch and the first loads. With PDL a kernel is launched while the kernel before it is
still running. Before ``wait_for_inputs`` it may only load what that kernel cannot be writing:
its weights (none of these kernels writes weights). The wait blocks until the kernel before it
has finished and its writes are visible; right after it, ``release_dependents`` lets the next
kernel launch. So at most two kernels overlap, and everything after a wait sees every earlier
kernel's output. After a kernel without PDL (PyTorch's own, an optimizer step's included) the
next one launches only when it has finished, so the early loads see its writes too.

``launch_options(tensor)`` gives the launch keyword that turns PDL on where it applies: CUDA
devices of compute capability 9 or more, not under the Triton interpreter, and not switched off
with ``AUDIOMAMBA_PDL=0`` (for comparisons).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl


def launch_options(tensor: torch.Tensor) -> dict:
    """``{"launch_pdl": True}`` where PDL applies to kernels on ``tensor``'s device, else ``{}``;
    kernels take ``PDL=bool(options)``."""
    enabled = (tensor.is_cuda and os.environ.get("TRITON_INTERPRET", "0") == "0"
               and os.environ.get("AUDIOMAMBA_PDL", "1") != "0" and _hopper_or_later(tensor.device.index))
    return {"launch_pdl": True} if enabled else {}


@functools.cache
def _hopper_or_later(device_index: int | None) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 9


@triton.jit
def wait_for_inputs(PDL: tl.constexpr):
    """Block until the kernel before this one has finished (a no-op without PDL)."""
    if PDL:
        tl.extra.cuda.gdc_wait()


@triton.jit
def release_dependents(PDL: tl.constexpr):
    """Let the next kernel launch; call only after ``wait_for_inputs``."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
