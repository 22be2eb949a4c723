"""The Triton kernels against the PyTorch reference, on fresh random inputs.

On a machine with a GPU they run there; elsewhere under the Triton interpreter (tests/conftest.py
sets TRITON_INTERPRET=1 before triton is imported). Tolerances: relative L2 error <= 1e-4 for fp32
inputs and <= 1e-2 for bf16 inputs, forward and every gradient; states are fp32 in both.
"""
import pytest
import torch

from audiomamba.ops.selective_scan import projected_state_update_ref, selective_scan_ref, selective_state_update_ref

kernels = pytest.importorskip("audiomamba_kernels.selective_scan")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _small_tiles_under_the_interpreter(monkeypatch):
    """The interpreter runs programs in Python: short chunks and channel blocks keep it quick and
    make even short sequences cross several chunks, several channel blocks, several tiles of the
    pass that carries the state across chunks and, for n >= 16, several backward programs per
    channel block, each with 8 of the states."""
    if DEVICE == "cpu":
        monkeypatch.setattr(kernels, "MAX_CHUNK", 16)
        monkeypatch.setattr(kernels, "BLOCK_D", 4)
        monkeypatch.setattr(kernels, "FORWARD_BLOCK_D", 4)
        monkeypatch.setattr(kernels, "PASS_CHUNKS", 2)
        monkeypatch.setattr(kernels, "BACKWARD_TILE", 8 * 16)


def rel_err(got, want):
    """||got - want|| / ||want||, with ||want|| floored at 1e-3 * sqrt(numel): a reference that is
    exactly zero (dA at L = 1, where nothing decays) is compared absolutely, not divided by zero."""
    floor = 1e-3 * want.numel() ** 0.5
    return ((got.double() - want.double()).norm() / want.double().norm().clamp(min=floor)).item()


def make_inputs(batch, d, n, length, dtype, with_z, with_d, with_bias):
    g = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())  # fresh per call

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(DEVICE)

    return dict(
        u=rand(batch, d, length).to(dtype),
        delta=rand(batch, d, length, scale=0.5, shift=-1.0).to(dtype),
        A=-torch.rand(d, n, generator=g).to(DEVICE) * 4 - 0.1,
        B=rand(batch, n, length).to(dtype),
        C=rand(batch, n, length).to(dtype),
        D=rand(d) if with_d else None,
        z=rand(batch, d, length).to(dtype) if with_z else None,
        delta_bias=rand(d, scale=0.1) if with_bias else None,
    )


# (batch, channels, state, length): L = 1, L not a multiple of the chunk, channels not a multiple
# of the block, N in {16, 64} and a state padded to a power of two (12: the kernels rely on padded
# states and times reading as zeros), lengths whose largest power-of-two factor is 1, 4 or 8 (the
# kernels compile for it); on the GPU, with the default tiles, up to 141 chunks (five tiles of the
# pass across chunks, the last one partial), n = 64 split over two backward programs, and 272
# channels: four full channel blocks of 64 (272 is not whole blocks of 128) and a partial one.
SHAPES = [(2, 3, 4, 1), (2, 5, 16, 37), (1, 3, 12, 21), (1, 3, 64, 40)]  # the interpreter's n = 64: one channel block
if torch.cuda.is_available():
    SHAPES += [(1, 17, 16, 1000), (2, 40, 64, 300), (2, 80, 16, 500), (2, 128, 16, 4001), (1, 8, 16, 9000),
               (1, 272, 16, 300)]


def test_a_backward_program_takes_block_d_channels_or_half_as_many_where_they_are_not_whole_blocks(monkeypatch):
    monkeypatch.setattr(kernels, "BLOCK_D", 128)
    blocks = {n_ch: kernels._tiles(dict(n_ch=n_ch, L_ALIGN=1, T=32, N_PAD=16), backward=True)["BLOCK"]
              for n_ch in (6, 96, 128, 192, 256, 272)}
    assert blocks == {6: 6, 96: 96, 128: 128, 192: 64, 256: 128, 272: 64}


def test_a_forward_program_takes_forward_block_d_channels_whole_blocks_or_not(monkeypatch):
    monkeypatch.setattr(kernels, "FORWARD_BLOCK_D", 64)
    blocks = {n_ch: kernels._tiles(dict(n_ch=n_ch, L_ALIGN=1, T=32, N_PAD=64), backward=False)["BLOCK"]
              for n_ch in (6, 96, 128, 272)}
    assert blocks == {6: 6, 96: 64, 128: 64, 272: 64}


@pytest.mark.parametrize("batch, d, n, length", SHAPES)
@pytest.mark.parametrize("options", [(True, True, True), (False, False, False)])
def test_forward_and_every_gradient_match_the_reference_in_fp32(batch, d, n, length, options):
    inputs = make_inputs(batch, d, n, length, torch.float32, *options)
    softplus = options[2]
    if not softplus:  # delta is used as given: it must be positive for a decaying recurrence
        inputs["delta"] = inputs["delta"].abs()
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items() if v is not None}
    ref_leaves = {k: v.detach().clone().requires_grad_() for k, v in leaves.items()}
    h0 = torch.randn(batch, d, n, device=DEVICE)
    y, last = kernels.selective_scan(**{**inputs, **leaves}, delta_softplus=softplus, return_last_state=True)
    y_ref, last_ref = selective_scan_ref(**{**inputs, **ref_leaves}, delta_softplus=softplus, return_last_state=True)
    assert rel_err(y, y_ref) <= 1e-4 and rel_err(last, last_ref) <= 1e-4
    weight = torch.randn_like(y_ref)
    (y * weight).sum().backward()
    (y_ref * weight).sum().backward()
    for name in leaves:
        assert rel_err(leaves[name].grad, ref_leaves[name].grad) <= 1e-4, name
    # With an initial state (prefix continuation), gradients reach it too.
    h0a, h0b = h0.clone().requires_grad_(), h0.clone().requires_grad_()
    ya = kernels.selective_scan(**inputs, delta_softplus=softplus, initial_state=h0a)
    yb = selective_scan_ref(**inputs, delta_softplus=softplus, initial_state=h0b)
    assert rel_err(ya, yb) <= 1e-4
    (ya * weight).sum().backward()
    (yb * weight).sum().backward()
    assert rel_err(h0a.grad, h0b.grad) <= 1e-4


def test_strided_inputs_as_mamba_passes_them_match_the_reference():
    """u, delta, z, B, C and the incoming gradient as transposed views of (batch, L, .) buffers, z
    one half of its buffer, B and C two slices of one: the same results as contiguous inputs."""
    batch, d, n, length = 2, 5, 16, 37
    g = torch.Generator().manual_seed(torch.seed() % 2**31)

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(DEVICE)

    buffers = {name: rand(batch, length, width).requires_grad_()
               for name, width in (("u", d), ("delta", d + 1), ("xz", 2 * d), ("bc", 3 + 2 * n))}
    vectors = dict(A=-torch.rand(d, n, generator=g).to(DEVICE) * 4 - 0.1, D=rand(d), delta_bias=rand(d, scale=0.1))
    ref_vectors = {k: v.clone().requires_grad_() for k, v in vectors.items()}
    vectors = {k: v.requires_grad_() for k, v in vectors.items()}

    def views(bufs):
        """The scan's arguments as views (B and C share bc, z is the second half of xz)."""
        return dict(u=bufs["u"].transpose(1, 2), delta=(bufs["delta"] * 0.5 - 1)[..., 1:].transpose(1, 2),
                    B=bufs["bc"][..., 3:3 + n].transpose(1, 2), C=bufs["bc"][..., 3 + n:].transpose(1, 2),
                    z=bufs["xz"][..., d:].transpose(1, 2))

    ref_buffers = {k: v.detach().clone().requires_grad_() for k, v in buffers.items()}
    strided = views(buffers)
    assert strided["u"].stride()[1] == 1 and not strided["z"].is_contiguous()
    y = kernels.selective_scan(**strided, **vectors, delta_softplus=True)
    y_ref = selective_scan_ref(**{k: v.contiguous() for k, v in views(ref_buffers).items()}, **ref_vectors,
                               delta_softplus=True)
    assert rel_err(y, y_ref) <= 1e-4
    weight = rand(batch, length, d).transpose(1, 2)  # the incoming gradient is strided too
    (y * weight).sum().backward()
    (y_ref * weight).sum().backward()
    for name in buffers:
        assert rel_err(buffers[name].grad, ref_buffers[name].grad) <= 1e-4, name
    for name in vectors:
        assert rel_err(vectors[name].grad, ref_vectors[name].grad) <= 1e-4, name


def test_the_output_before_the_gate_is_kept_only_when_a_backward_will_follow(monkeypatch):
    """The forward writes y before silu(z) for the backward's gz: one more (batch, d, L) tensor,
    so not under no_grad, not when no input requires grad, and not without z."""
    asked = []
    forward = kernels._eager_scan  # the forward's entry in eager code

    def spy(*args):
        asked.append(args[-1])
        result = forward(*args)
        assert result[-1].numel() == (result[0].numel() if args[-1] and args[6] is not None else 0)
        return result

    monkeypatch.setattr(kernels, "_eager_scan", spy)
    inputs = make_inputs(1, 3, 4, 5, torch.float32, True, True, True)
    kernels.selective_scan(**inputs, delta_softplus=True)
    leaves = {**inputs, "u": inputs["u"].clone().requires_grad_()}
    with torch.no_grad():
        kernels.selective_scan(**leaves, delta_softplus=True)
    kernels.selective_scan(**{**leaves, "z": None}, delta_softplus=True)
    kernels.selective_scan(**leaves, delta_softplus=True).sum().backward()
    assert asked == [False, False, True, True]


def test_the_scan_is_a_custom_operator_that_torch_compile_keeps_in_one_graph():
    """Registered forward, backward, fake shapes and gradient agree (torch.library.opcheck), and a
    compiled function that calls the scan is one graph: no break at the kernels' launches."""
    inputs = make_inputs(1, 5, 4, 21, torch.float32, True, True, True)  # two channel blocks, two chunks
    args = tuple(inputs[k].requires_grad_() for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"))
    result = torch.library.opcheck(kernels._scan, (*args, True, None, True))
    assert all(outcome == "SUCCESS" for outcome in result.values()), result
    explained = torch._dynamo.explain(lambda *a: kernels.selective_scan(*a, delta_softplus=True).sin().sum())(*args)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


def test_the_custom_operator_and_the_eager_function_give_the_same_gradients():
    """Eager code runs the scan as a plain autograd Function and torch.compile the custom operator:
    the same kernels, so the same results to the bit, initial state and D included."""
    inputs = make_inputs(1, 5, 16, 21, torch.float32, True, True, True)  # two channel blocks, two chunks
    init = torch.randn(1, 5, 16, device=DEVICE)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")] + [True, init, True]
    grads = []
    for run in (kernels._scan, kernels._eager_scan):
        leaves = [a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
        y, final, *_ = run(*leaves)
        (y * torch.linspace(-1, 1, y.shape[-1], device=DEVICE)).sum().backward()
        grads.append([y, final] + [a.grad for a in leaves if isinstance(a, torch.Tensor)])
    assert all(g is not None for g in grads[1])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("n", [16, 64])
@pytest.mark.parametrize("length", [44, 45])  # even: the sequential forward reads B and C as bf16 pairs
def test_bf16_inputs_match_the_reference_within_1e_2(n, length):
    inputs = make_inputs(1, 5, n, length, torch.bfloat16, True, True, True)
    leaves = {k: v.clone().requires_grad_() for k in ("u", "delta", "B", "C", "z") for v in [inputs[k]]}
    ref = {k: v.detach().float().requires_grad_() for k, v in leaves.items()}
    y = kernels.selective_scan(**{**inputs, **leaves}, delta_softplus=True)
    y_ref = selective_scan_ref(**{**inputs, **ref}, delta_softplus=True)
    assert y.dtype == torch.bfloat16 and rel_err(y.float(), y_ref) <= 1e-2
    weight = torch.randn(y.shape, device=DEVICE)
    (y.float() * weight).sum().backward()
    (y_ref * weight).sum().backward()
    for name in leaves:
        assert rel_err(leaves[name].grad.float(), ref[name].grad) <= 1e-2, name


@pytest.mark.parametrize("d, n", [(5, 4), (40, 16), (70, 64)])
@pytest.mark.parametrize("with_options", [True, False])
def test_fused_state_update_matches_the_reference_step(d, n, with_options):
    x = make_inputs(3, d, n, 1, torch.float32, with_options, with_options, with_options)
    step = {k: (v[..., 0] if k in ("u", "delta", "B", "C", "z") and v is not None else v) for k, v in x.items()}
    state = torch.randn(3, d, n, device=DEVICE)
    state_ref = state.clone()
    args = (step["u"], step["delta"], step["A"], step["B"], step["C"], step["D"], step["z"], step["delta_bias"],
            with_options)
    y = kernels.selective_state_update(state, *args)
    y_ref = selective_state_update_ref(state_ref, *args)
    assert rel_err(y, y_ref) <= 1e-5 and rel_err(state, state_ref) <= 1e-5


@pytest.mark.parametrize("batch, d, n, rank", [(3, 5, 4, 1), (20, 40, 16, 3), (3, 130, 16, 9)] +
                         ([(1, 128, 16, 4), (256, 128, 16, 4), (33, 512, 16, 16), (256, 256, 64, 8)]
                          if torch.cuda.is_available() else []))
@pytest.mark.parametrize("projections", ["in the kernel", "first"])
@pytest.mark.parametrize("weights", ["fp32", "bf16"])  # bf16: narrowed, exact
def test_projected_state_update_matches_the_reference_step(batch, d, n, rank, projections, weights, monkeypatch):
    """Mamba's whole SSM step (x_proj, dt_proj, softplus, update, D, gate) in one kernel, or, at the
    batches where ``projections_first_pay``, with x_proj and dt_proj in a kernel of their own
    before it (here whatever the batch)."""
    monkeypatch.setattr(kernels, "projections_first_pay", lambda *_: projections == "first")
    g = torch.Generator().manual_seed(torch.seed() % 2**31)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE)

    x_proj, dt_proj = rand(rank + 2 * n, d, scale=d**-0.5), rand(d, rank, scale=rank**-0.5)
    if weights == "bf16":
        x_proj, dt_proj = x_proj.to(torch.bfloat16), dt_proj.to(torch.bfloat16)
    args = (rand(batch, d), rand(batch, d), x_proj, dt_proj, rand(d, scale=0.5),
            -torch.rand(d, n, generator=g).to(DEVICE) * 4 - 0.1, rand(d))
    state = rand(batch, d, n)
    state_ref = state.clone()
    y = kernels.projected_state_update(state, *args)
    y_ref = projected_state_update_ref(state_ref, *args[:2], x_proj.float(), dt_proj.float(), *args[4:])
    assert rel_err(y, y_ref) <= 1e-5 and rel_err(state, state_ref) <= 1e-5
