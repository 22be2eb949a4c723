"""The fused sampling tail against ``sample_tail_ref`` on fresh random logits: the same tokens,
guard flags and model inputs exactly, and the same log-likelihoods within 1e-4 (fp32 sums in
another order). Rows with NaN or infinite logits and rows already stopped are included. On the
GPU when there is one, else under the Triton interpreter."""
import pytest
import torch

from audiomamba.sample import gumbel_, sample_tail_ref
from tests.kernels.test_selective_scan_kernels import DEVICE

kernels = pytest.importorskip("audiomamba_kernels.sample_tail")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's inf - inf
@pytest.mark.parametrize("guidance", [1.0, 2.5])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
@pytest.mark.parametrize("t, prefix_len", [(3, 0), (3, 5), (7, 5)])  # no prefix, inside it, past it
def test_fused_tail_matches_the_reference(guidance, temperature, t, prefix_len):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    rows, length = 6, 10
    logits = (torch.randn((2 if guidance != 1.0 else 1) * rows, 256, generator=g) * 3).to(DEVICE)
    logits[1, 17] = float("nan")
    logits[2, 40] = float("inf")
    gumbel = gumbel_(torch.empty(rows, 256), g).to(DEVICE)
    alive = torch.tensor([True, True, True, False, True, True], device=DEVICE)
    failed_at = torch.tensor([-1, -1, -1, 1, -1, -1], device=DEVICE)
    tokens = torch.randint(0, 256, (rows, length), generator=g, dtype=torch.uint8).to(DEVICE)
    loglik = torch.randn(rows, generator=g, dtype=torch.float64).to(DEVICE)
    model_input = torch.zeros(logits.shape[0], dtype=torch.long, device=DEVICE)
    prefix = torch.randint(0, 256, (prefix_len,), generator=g).to(DEVICE) if prefix_len else None
    t = torch.tensor([t], device=DEVICE)
    state = [alive, failed_at, t, tokens, loglik, model_input]
    ref = [x.clone() for x in state]
    kernels.sample_tail(logits.clone(), gumbel, *state, prefix, temperature, 1.0, guidance)
    sample_tail_ref(logits.clone(), gumbel, *ref, prefix, temperature, 1.0, guidance)
    for got, want in zip(state, ref):
        if got.dtype == torch.float64:
            torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
        else:
            assert torch.equal(got, want)
    assert not alive[1] and not alive[2] and failed_at[1] == t  # the guard stopped the bad rows
