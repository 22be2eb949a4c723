"""Programmatic dependent launch: where it is switched on, and that it changes no result. The
second test needs a Hopper-class GPU (run on the device machine); the first runs anywhere."""
import pytest
import torch

from audiomamba.config import ModelConfig
from audiomamba.models.lm import WaveformLM
from audiomamba.sample import generate

pdl = pytest.importorskip("audiomamba_kernels.pdl")
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


def test_pdl_is_off_for_cpu_tensors_and_when_switched_off(monkeypatch):
    assert pdl.launch_options(torch.zeros(1)) == {}
    if HOPPER:
        assert pdl.launch_options(torch.zeros(1, device="cuda")) == {"launch_pdl": True}
        monkeypatch.setenv("AUDIOMAMBA_PDL", "0")
        assert pdl.launch_options(torch.zeros(1, device="cuda")) == {}


@pytest.mark.skipif(not HOPPER, reason="needs a GPU of compute capability 9 or more")
@pytest.mark.parametrize("batch", [1, 40])
def test_graphed_sampling_gives_the_same_clips_with_and_without_pdl(monkeypatch, batch):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, pool=[4, 4], outer=["mamba", "mamba"], center=["mamba"], mamba_state=8,
                      n_classes=2)
    m = WaveformLM(cfg).cuda().eval()
    with_pdl = generate(m, batch, 160, batch_size=batch, seed=1, label=1, guidance=2.0)
    monkeypatch.setenv("AUDIOMAMBA_PDL", "0")
    without = generate(m, batch, 160, batch_size=batch, seed=1, label=1, guidance=2.0)
    assert torch.equal(with_pdl.tokens, without.tokens)
    assert torch.equal(with_pdl.loglik_bits, without.loglik_bits)
