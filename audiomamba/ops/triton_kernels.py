"""On-demand import of the Triton kernels (``kernels/audiomamba_kernels``), with a fallback.

Nothing here runs at ``import audiomamba``: a kernel module is imported the first time a CUDA
tensor asks for it. When triton or the kernels cannot be imported, callers get None and use
their PyTorch reference, after a one-line notice. ``AUDIOMAMBA_SCAN=reference`` forces the
references everywhere.
"""
from __future__ import annotations

import importlib
import os
import sys

_modules: dict = {}  # kernel module name -> module, or False when it could not be imported
_notice_given = False


def load(name: str):
    """The module ``audiomamba_kernels.<name>``, or None (reference forced, or unavailable)."""
    global _notice_given
    if os.environ.get("AUDIOMAMBA_SCAN", "").lower() == "reference":
        return None
    if name not in _modules:
        try:
            _modules[name] = importlib.import_module(f"audiomamba_kernels.{name}")  # imports triton
        except Exception as err:  # ImportError, or triton failing to find a GPU toolchain
            _modules[name] = False
            if not _notice_given:
                print(f"audiomamba: Triton kernels unavailable ({err}); using the PyTorch reference", file=sys.stderr)
                _notice_given = True
    return _modules[name] or None
