"""Sequence blocks (S4D, Mamba, MLP), the SaShiMi U-Net and the waveform LM."""
