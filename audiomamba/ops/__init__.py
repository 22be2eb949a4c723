"""Sequence operators with a pure-PyTorch reference and (on CUDA) Triton kernels."""
