"""Triton GPU kernels for audiomamba, imported only on demand (never at `import audiomamba`).

`audiomamba.ops.triton_kernels` imports `audiomamba_kernels.<name>` and callers fall back to
the PyTorch reference, with a one-line notice, when it cannot be imported.
"""
