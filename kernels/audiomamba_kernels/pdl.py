"""Programmatic dependent launch (PDL, Hopper and later) for the generation kernels.

A generation step is a chain of small kernels of a few microseconds each, and much of each is
the launch and the first loads. With PDL a kernel is launched while the kernel before it is
still running. It may load what no running kernel writes (its weights: nothing writes them
while sampling), then ``wait_for_inputs`` blocks until the kernel before it has finished and its
writes are visible. Right after that wait, ``release_dependents`` lets the next kernel launch.
So at most two kernels overlap, and everything after a wait sees every earlier kernel's output.
A kernel without PDL (PyTorch's own) runs in plain stream order; after one, the wait is a no-op.

``launch_options(tensor)`` gives the launch keyword that turns PDL on where it applies: CUDA
devices of compute capability 9 or more, not under the Triton interpreter, and not switched off
with ``AUDIOMAMBA_PDL=0`` (for comparisons).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def launch_options(tensor: torch.Tensor) -> dict:
    """``{"launch_pdl": True}`` where PDL applies to kernels on ``tensor``'s device, else ``{}``;
    kernels take ``PDL=bool(options)``."""
    enabled = (tensor.is_cuda and os.environ.get("TRITON_INTERPRET", "0") == "0"
               and os.environ.get("AUDIOMAMBA_PDL", "1") != "0"
               and torch.cuda.get_device_capability(tensor.device)[0] >= 9)
    return {"launch_pdl": True} if enabled else {}


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
