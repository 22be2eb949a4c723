"""The fused sampling tail against ``sample_tail_ref`` on fresh random backbone outputs and
weights: the same tokens, guard flags and sample counts exactly, the same next inputs (an
embedding plus a label vector, one fp32 add), and the same log-likelihoods within 1e-4 (fp32
sums in another order). Rows with NaN or infinite outputs and rows already stopped are included.
On the GPU when there is one, else under the Triton interpreter."""
import pytest
import torch

from audiomamba.sample import OutputWeights, gumbel_, sample_tail_ref
from tests.kernels.test_selective_scan_kernels import DEVICE

kernels = pytest.importorskip("audiomamba_kernels.sample_tail")


def random_weights(model_rows: int, width: int, g: torch.Generator) -> OutputWeights:
    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE)

    return OutputWeights(1 + randn(width, scale=0.1), randn(width, scale=0.1), 1e-5,
                         randn(256, width, scale=width**-0.5 * 3), randn(256, scale=0.1), randn(256, width),
                         randn(model_rows, width))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's inf - inf
@pytest.mark.parametrize("guidance", [1.0, 2.5])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
@pytest.mark.parametrize("t, prefix_len, width", [(3, 0, 64), (3, 5, 24), (7, 5, 80)])  # no prefix, inside it, past it
def test_fused_tail_matches_the_reference(guidance, temperature, t, prefix_len, width):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    rows, length = 6, 10
    model_rows = (2 if guidance != 1.0 else 1) * rows
    weights = random_weights(model_rows, width, g)
    h = torch.randn(model_rows, width, generator=g).to(DEVICE)
    h[1, 17] = float("nan")
    h[2, 4] = float("inf")
    gumbel = gumbel_(torch.empty(rows, 256), g).to(DEVICE)
    alive = torch.tensor([True, True, True, False, True, True], device=DEVICE)
    failed_at = torch.tensor([-1, -1, -1, 1, -1, -1], device=DEVICE)
    tokens = torch.randint(0, 256, (rows, length), generator=g, dtype=torch.uint8).to(DEVICE)
    loglik = torch.randn(rows, generator=g, dtype=torch.float64).to(DEVICE)
    next_input = torch.zeros(model_rows, width, device=DEVICE)
    prefix = torch.randint(0, 256, (prefix_len,), generator=g).to(DEVICE) if prefix_len else None
    start, t = t, torch.full((rows,), t, device=DEVICE)
    state = [alive, failed_at, t, tokens, loglik, next_input]
    ref = [x.clone() for x in state]
    kernels.sample_tail(h, weights, gumbel, *state, prefix, temperature, 1.0, guidance)
    sample_tail_ref(h, weights, gumbel, *ref, prefix, temperature, 1.0, guidance)
    for got, want in zip(state, ref):
        if got.dtype == torch.float64:
            torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
        else:
            assert torch.equal(got, want)
    assert not alive[1] and not alive[2] and failed_at[1] == start  # the guard stopped the bad rows
    assert (t == start + 1).all()  # every clip's count moved on by one
