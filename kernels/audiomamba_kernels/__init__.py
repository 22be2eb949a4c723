"""Triton GPU kernels for audiomamba, imported only on demand (never at `import audiomamba`).

`audiomamba.ops.selective_scan` looks for `audiomamba_kernels.selective_scan` and falls back to
the PyTorch reference, with a one-line notice, when it cannot be imported.
"""
