"""Operators with a gradient called two ways: custom operators where torch.compile traces, plain
autograd Functions built from the same pieces in eager code."""
import pytest
import torch

eager_function = pytest.importorskip("audiomamba_kernels.eager_function")


def test_a_plain_function_runs_the_pieces_of_an_operator():
    """forward gives the output, setup_context saves for backward, backward gives the gradients."""
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    def backward(ctx, grad):
        (scale,) = ctx.saved_tensors
        return grad * scale, None

    scaled = eager_function.plain_function("Scaled", lambda x, scale: x * scale, setup_context, backward)
    x, scale = torch.randn(5, requires_grad=True), torch.randn(5)
    y = scaled(x, scale)
    torch.testing.assert_close(y, x.detach() * scale)
    assert type(y.grad_fn).__name__ == "ScaledBackward"
    y.sum().backward()
    torch.testing.assert_close(x.grad, scale)


def test_the_custom_operator_is_picked_only_while_torch_compile_traces():
    x = torch.randn(7)

    def pick():
        return eager_function.for_caller(torch.sin, torch.cos)(x)

    torch.testing.assert_close(pick(), torch.cos(x))
    torch.testing.assert_close(torch.compile(pick, backend="eager")(), torch.sin(x))
