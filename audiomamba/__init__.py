"""audiomamba: autoregressive raw-waveform speech generation with state-space models.

Importing the package imports nothing optional (no triton, gradio or soundfile).
"""
__version__ = "0.1.0"
