"""The scan's Gluon forward and gradients pass (``selective_scan_gluon``), which replace the Triton ones
on Hopper GPUs at 16 states, and the forward's states every half chunk that the gradients pass needs.

Gluon kernels do not run under the Triton interpreter. So on any machine the kernels are compiled
for sm_90 and their loops checked for spills; on a Hopper GPU every output and gradient is checked
against the reference (fp32 relative L2 error <= 1e-4, bf16 <= 1e-2) and against the Triton passes.
"""
import os
import subprocess
import sys

import pytest
import torch

from audiomamba.ops.selective_scan import selective_scan_ref
from tests.conftest import REPO
from tests.kernels.test_selective_scan_kernels import DEVICE, make_inputs, rel_err

gluon = pytest.importorskip("audiomamba_kernels.selective_scan_gluon")
kernels = pytest.importorskip("audiomamba_kernels.selective_scan")

on_hopper = pytest.mark.skipif(not (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9),
                               reason="the Gluon kernel runs on Hopper GPUs only")
NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


# per kernel: its loop's iteration in chunk-pairs (2 x 16 x 32 elements over 32 lanes), the exponentials
# an element needs (the decay; in the gradients pass the adjoint's decay is the states' one time later),
# the instructions an element it stays under, far below the Triton passes' (gradients 42, sequential
# forward 18.6, handed back 11.3: kernels/sass_count.py), and the global loads it may wait for within 200
# instructions of issuing them
LOOPS = {"gradients": (1, 1, 30, 0), "forward": (2, 1, 16, 0), "handed": (1, 1, 10, 0)}


@pytest.mark.parametrize("kernel", sorted(LOOPS))
def test_it_compiles_for_hopper_on_any_machine_and_its_loop_does_not_spill(kernel):
    """Nor wait for loads meant for a later pass through the loop: the backward passes' rows come by
    cp.async, and loaded into registers they were waited for where they were loaded; the forward's
    bf16 rows are carried as int32 pairs, and as bf16 they were split into registers at the loop's end."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # it compiles, never runs
    script = ("import sys; sys.path.insert(0, 'kernels'); from sass_count import early_load_waits, loop_profile; "
              "from audiomamba_kernels import selective_scan_gluon as g; "
              f"c = g.compile_for_hopper('{kernel}').asm['cubin']; p = loop_profile(c); o = p['opcodes']; "
              "print(p['registers'], sum(o.values()), o['LDL'] + o['STL'], o['MUFU'], len(early_load_waits(c)))")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    registers, loop, spills, exponentials, early_waits = (int(x) for x in out.stdout.split())
    assert registers <= 255 and spills == 0
    chunks, per_element, most, early_most = LOOPS[kernel]
    assert exponentials >= 32 * chunks * per_element
    assert loop < 32 * chunks * most
    assert early_waits <= early_most


def test_it_takes_16_states_in_chunks_of_32_over_whole_blocks_of_an_even_number_of_channels():
    u = torch.empty(1, 64, 100)  # the device is asked last, only where everything else fits
    assert not gluon.fits(u, n_state=64, chunk=32, channels=64, block=64, groups=1)
    assert not gluon.fits(u, n_state=16, chunk=64, channels=64, block=64, groups=1)
    assert not gluon.fits(u, n_state=16, chunk=32, channels=80, block=64, groups=1)
    assert not gluon.fits(u, n_state=16, chunk=32, channels=17, block=17, groups=1)
    assert not gluon.fits(u, n_state=16, chunk=32, channels=64, block=64, groups=2)


def test_the_forward_takes_16_states_over_channels_in_whole_programs_saving_states_every_32_or_64():
    u = torch.empty(1, 64, 96)
    B = torch.empty(1, 16, 96, dtype=torch.bfloat16)
    assert not gluon.forward_fits(u, torch.empty(1, 64, 96), torch.empty(1, 64, 96), channels=64, every=64)
    assert not gluon.forward_fits(u, B, B, channels=63, every=64)
    assert not gluon.forward_fits(u, B, B, channels=2 * gluon.FORWARD_WARPS + 2, every=64)  # a program's channel pairs
    assert not gluon.forward_fits(u, B, B, channels=64, every=16)


def test_the_forward_reads_b_and_c_by_the_tma_unit_in_rows_of_a_multiple_of_16_bytes():
    u = torch.empty(1, 64, 100)  # the device is asked last, only where everything else fits
    for B in [torch.empty(1, 16, 100, dtype=torch.bfloat16), torch.empty(1, 16, 101),
              torch.empty(1, 16, 100, dtype=torch.float64), torch.empty(1, 16, 192, dtype=torch.bfloat16)[..., :96]]:
        assert not gluon.forward_fits(u, B, B, channels=64, every=64)


def _gradients(x, gy):
    leaves = [v for v in x.values() if v is not None]
    y = kernels.selective_scan(**x, delta_softplus=True)
    return torch.autograd.grad(y, leaves, gy)


@on_hopper
@pytest.mark.parametrize("batch, d, length", [(2, 64, 200), (1, 128, 1000), (2, 8, 4001), (3, 192, 96)])
@pytest.mark.parametrize("options", [(True, True, True), (False, False, False)])
def test_every_gradient_matches_the_reference_in_fp32(batch, d, length, options, monkeypatch):
    """Lengths that end inside a chunk (200, 1000, 4001 odd) and one that does not; blocks of 64
    channels and a short one (8); z, D and delta's bias each given or not."""
    calls = []
    for name in ("handed_back", "gradients"):
        real = getattr(kernels._gluon(), name)
        monkeypatch.setattr(kernels._gluon(), name, lambda *a, name=name, real=real: calls.append(name) or real(*a))
    x = make_inputs(batch, d, 16, length, torch.float32, *options)
    for v in x.values():
        if v is not None:
            v.requires_grad_(True)
    gy = torch.randn(batch, d, length, device=DEVICE)
    got = _gradients(x, gy)
    assert calls == ["handed_back", "gradients"], "the Gluon passes did not both run"
    y_ref = selective_scan_ref(**x, delta_softplus=True)
    want = torch.autograd.grad(y_ref, [v for v in x.values() if v is not None], gy)
    for name, g, w in zip([k for k, v in x.items() if v is not None], got, want):
        assert rel_err(g, w) <= 1e-4, name


@on_hopper
@pytest.mark.parametrize("options", [(True, True, True), (False, False, False)])
def test_bf16_gradients_match_the_reference_and_the_triton_pass(options, monkeypatch):
    x = {k: v for k, v in make_inputs(2, 64, 16, 1000, torch.bfloat16, *options).items() if v is not None}
    for v in x.values():
        v.requires_grad_(True)
    gy = torch.randn(2, 64, 1000, device=DEVICE, dtype=torch.bfloat16)

    def grads(gluon_on):
        monkeypatch.setattr(kernels, "GLUON", gluon_on)
        y = kernels.selective_scan(**x, delta_softplus=True)
        return torch.autograd.grad(y, list(x.values()), gy)

    got, triton_pass = grads(True), grads(False)
    reference = {k: v.detach().float().requires_grad_(True) for k, v in x.items()}
    y_ref = selective_scan_ref(**reference, delta_softplus=True)
    want = torch.autograd.grad(y_ref, list(reference.values()), gy.float())
    for name, g, t, w in zip(x, got, triton_pass, want):
        assert rel_err(g.float(), w) <= 1e-2, name
        assert rel_err(g.float(), t.float()) <= 1e-3, name  # the same sums in another order, rounded to bf16


@on_hopper
@pytest.mark.parametrize("batch, d, length", [(2, 64, 200), (1, 128, 1000), (2, 8, 4008), (3, 24, 96), (1, 2, 8),
                                              (1, 4, 7), (2, 8, 4001), (1, 4, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("options", [(True, True, True), (False, False, False)])
def test_the_forward_matches_the_reference_and_the_triton_forward(batch, d, length, dtype, options, monkeypatch):
    """Lengths that end inside a chunk of 32 (200, 1000, 4008) and one that does not (96, an odd
    number of chunks); lengths the TMA unit cannot read (7, 4001, 1) and channels in no whole
    program of 8 (2, 4): the Triton forward runs there; an initial state or none; every output the
    scan returns, with the states saved every 32 samples (a backward follows) and every 64 (none
    does)."""
    calls = []
    real = kernels._gluon().forward
    monkeypatch.setattr(kernels._gluon(), "forward", lambda *a: calls.append(1) or real(*a))
    x = make_inputs(batch, d, 16, length, dtype, *options)
    args = [x[k] for k in NAMES]
    for initial_state, backward_follows in [(None, False), (torch.randn(batch, d, 16, device=DEVICE), True)]:
        monkeypatch.setattr(kernels, "GLUON", True)
        calls.clear()
        got = kernels._forward(*args, True, initial_state, backward_follows)
        fits = length % 8 == 0 and d % (2 * gluon.FORWARD_WARPS) == 0
        assert bool(calls) == fits, "the Gluon forward runs where the TMA unit reads B and C, on whole programs"
        monkeypatch.setattr(kernels, "GLUON", False)
        triton_forward = kernels._forward(*args, True, initial_state, backward_follows)
        reference = {k: v.float() if v is not None and v.dtype == torch.bfloat16 else v for k, v in x.items()}
        y_ref, final_ref = selective_scan_ref(**reference, delta_softplus=True, return_last_state=True,
                                              initial_state=initial_state)
        assert rel_err(got[0].float(), y_ref) <= (1e-4 if dtype == torch.float32 else 1e-2)
        assert rel_err(got[1], final_ref) <= 1e-4  # the state is fp32 either way
        for name, g, t in zip(["y", "final", "incoming", "dt_sum", "pre"], got, triton_forward):
            assert g.shape == t.shape, name
            if g.numel():  # the same sums in another order (y and pre rounded to bf16 where they are)
                assert rel_err(g.float(), t.float()) <= (1e-3 if dtype == torch.bfloat16 and name in ("y", "pre")
                                                         else 1e-5), name


@on_hopper
def test_the_forward_reads_bf16_rows_at_an_odd_address_element_by_element(monkeypatch):
    """bf16 u, delta and z are read as int32 pairs where they are 4-byte aligned; starting at an odd
    element (2 bytes past), they are read one element at a time, to the same outputs."""
    calls = []
    real = kernels._gluon().forward
    monkeypatch.setattr(kernels._gluon(), "forward", lambda *a: calls.append(1) or real(*a))
    x = make_inputs(2, 64, 16, 256, torch.bfloat16, True, True, True)
    for name in ("u", "delta", "z"):
        storage = torch.empty(x[name].numel() + 1, dtype=torch.bfloat16, device=DEVICE)
        x[name] = storage[1:].view_as(x[name]).copy_(x[name])
        assert x[name].data_ptr() % 4 == 2
    args = [x[k] for k in NAMES]
    monkeypatch.setattr(kernels, "GLUON", True)
    got = kernels._forward(*args, True, None, False)
    assert calls, "the Gluon forward ran"
    monkeypatch.setattr(kernels, "GLUON", False)
    triton_forward = kernels._forward(*args, True, None, False)
    y_ref = selective_scan_ref(**{k: v.float() if v.dtype == torch.bfloat16 else v for k, v in x.items()},
                               delta_softplus=True)
    assert rel_err(got[0].float(), y_ref) <= 1e-2
    assert rel_err(got[0].float(), triton_forward[0].float()) <= 1e-3
