"""One position of sliding-window attention (RoPE, the ring buffer's write, the softmax over the
slots written so far) in one kernel, against its PyTorch reference, on fresh random inputs over
more positions than the window holds, so that the ring buffer wraps. On the GPU when there is one,
else under the Triton interpreter. Tolerance: relative L2 error <= 1e-5 for the output and both
caches (fp32; only the order of the sums differs)."""
import pytest
import torch

from audiomamba.ops.attention import attention_step_ref
from tests.kernels.test_selective_scan_kernels import DEVICE, rel_err

kernels = pytest.importorskip("audiomamba_kernels.attention_step")

SHAPES = [(1, 1, 4, 4), (3, 2, 5, 6), (2, 3, 8, 10)]  # (batch, heads, window, d): sizes below and at their padding
if torch.cuda.is_available():
    SHAPES += [(256, 4, 256, 64), (1, 4, 256, 16), (5, 3, 100, 20)]


@pytest.mark.parametrize("batch, heads, window, d", SHAPES)
def test_fused_attention_step_matches_the_reference_as_the_window_fills_and_wraps(batch, heads, window, d):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    inv_freq = 10000.0 ** (-torch.arange(0, d, 2).float() / d)
    keys, values = torch.zeros(batch, heads, window, d), torch.zeros(batch, heads, window, d)
    keys, values, inv_freq = keys.to(DEVICE), values.to(DEVICE), inv_freq.to(DEVICE)
    ref_keys, ref_values = keys.clone(), values.clone()
    positions = list(range(window + 3)) if window <= 10 else [0, 1, window - 1, window, 5 * window + 7]
    for p in positions:
        position = torch.tensor([p], device=DEVICE)
        qkv = torch.randn(batch, 3 * heads * d, generator=g).to(DEVICE)
        got = kernels.attention_step(keys, values, position, qkv, inv_freq)
        want = attention_step_ref(ref_keys, ref_values, position, qkv, inv_freq)
        assert got.shape == (batch, heads * d) and position.item() == p  # the caller advances it
        assert rel_err(got, want) <= 1e-5
        assert rel_err(keys, ref_keys) <= 1e-5 and rel_err(values, ref_values) <= 1e-5
