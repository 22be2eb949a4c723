"""Where this project's Gluon kernels may run, and their modules, imported on first use.

Gluon is Triton's dialect with explicit layouts. The kernels written in it here are for Hopper GPUs
(each module's ``fits`` says which work it takes) and do not run under the Triton interpreter.
``AUDIOMAMBA_GLUON=0`` switches them all off, for comparisons.
"""
from __future__ import annotations

import functools
import importlib
import os
import sys

import torch


def may_run(t: torch.Tensor) -> bool:
    """Whether a Gluon kernel may take work on tensor t: where one can (``can_run``), unless
    ``AUDIOMAMBA_GLUON=0``."""
    return can_run(t) and os.environ.get("AUDIOMAMBA_GLUON") != "0"


def can_run(t: torch.Tensor) -> bool:
    """Whether a Gluon kernel can take work on tensor t: on CUDA, outside the interpreter."""
    return t.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1"


@functools.cache
def kernel_module(name: str, what: str):
    """The module ``audiomamba_kernels.<name>``, or None after a one-line notice naming ``what`` where
    Gluon does not import (a Triton without it); the Triton kernel then does that work."""
    try:
        return importlib.import_module(f"audiomamba_kernels.{name}")
    except ImportError as err:
        print(f"audiomamba: the Gluon {what} is unavailable ({err}); using the Triton one", file=sys.stderr)
        return None


def compile_for_sm90(kernel, constexprs: dict, bf16: set, options: dict, descriptors: dict | None = None):
    """Gluon ``kernel`` compiled for sm_90 on any machine (Triton ships the toolchain), for tests and
    instruction counts: the pointers named in ``bf16`` to bf16, the other pointers to fp32, all
    16-byte aligned; ``descriptors`` names TMA descriptor arguments (dtype as Triton spells it,
    block shape, shared layout); ``eps`` an fp32 scalar and the other arguments i32."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    signature, attrs = {}, {}
    for index, name in enumerate(kernel.arg_names):
        if descriptors and name in descriptors:
            dtype, block, layout = descriptors[name]
            signature[name] = f"tensordesc<{dtype}{list(block)},{layout!r}>"
        elif name.endswith("_ptr"):
            signature[name] = "*bf16" if name in bf16 else "*fp32"
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in constexprs:
            signature[name] = "constexpr"
        else:
            signature[name] = "fp32" if name == "eps" else "i32"
    source = GluonASTSource(kernel, signature, constexprs, attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
