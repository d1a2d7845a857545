"""The memory claim, measured (torch): what autograd keeps for backward.

Bytes saved are counted with ``torch.autograd.graph.saved_tensors_hooks``, one count per storage (a
view saved twice, or a view of x, is the same memory). x, w and b are the caller's own tensors, kept
alive anyway; the claim is about everything else:

* save="activations": SwiGLU keeps h (B, 2U) where the unfused formula keeps a, g and silu(g), 3 x
  (B, U): at most 2/3 of it.
* save="input": nothing of size (B, U) or larger beyond x and w.
"""

from __future__ import annotations

import backend_arrays as ba
import pytest

torch = pytest.importorskip("torch")

# B*U (49152) larger than x (8192) and w (768): sizes cannot be confused; h (98304 elements) above
# the size up to which float32 training calls are autograd of plain ATen calls (torch backend)
B, D, U = 1024, 8, 48


def _saved(fn, *inputs):
    """Storages autograd keeps for backward during ``fn(*inputs)``.

    Returns {data_ptr: bytes}, minus the inputs' own storages.
    """
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    own = {t.untyped_storage().data_ptr() for t in inputs}
    return out, {ptr: n for ptr, n in saved.items() if ptr not in own}


def _inputs(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, D, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(D, 2 * U, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(2 * U, generator=g, dtype=dtype, requires_grad=True)
    return x, w, b


def _unfused_split(x, w, b):
    a, g = (x @ w + b).chunk(2, dim=-1)
    return a * torch.nn.functional.silu(g)


def _unfused_two_matmuls(x, w, b):
    a = x @ w[:, :U] + b[:U]
    g = x @ w[:, U:] + b[U:]
    return a * torch.nn.functional.silu(g)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("backend", ba.backend_params(["torch"]))
def test_torch_swiglu_saves_at_most_two_thirds_of_unfused(backend, dtype):
    import glu_kernels as gk

    dtype = getattr(torch, dtype)
    unit = B * U * torch.empty((), dtype=dtype).element_size()
    out, fused = _saved(lambda x, w, b: gk.swiglu(x, w, b), *_inputs(dtype))
    assert sum(fused.values()) == 2 * unit, fused  # exactly h
    for unfused_fn in (_unfused_split, _unfused_two_matmuls):
        ref, unfused = _saved(unfused_fn, *_inputs(dtype))
        assert sum(unfused.values()) >= 3 * unit, unfused  # a, g, silu(g) (the check is honest)
        assert sum(fused.values()) <= 2 / 3 * sum(unfused.values())
        assert out.shape == ref.shape
        if dtype == torch.float32:  # the same function (values: test_reference_parity.py)
            torch.testing.assert_close(out, ref)
    # the gradient still arrives
    out.sum().backward()


@pytest.mark.parametrize("activation", ["sigmoid", "silu", "gelu", "relu", "linear"])
@pytest.mark.parametrize("backend", ba.backend_params(["torch"]))
def test_torch_save_input_keeps_nothing_activation_sized(backend, activation):
    import glu_kernels as gk

    x, w, b = _inputs(torch.float32)
    out, saved = _saved(
        lambda x, w, b: gk.glu(x, w, b, activation=activation, save="input"), x, w, b
    )
    big = {ptr: n for ptr, n in saved.items() if n >= B * U * 4}
    assert big == {}, f"save='input' kept {big} beyond x, w and b"
    out.sum().backward()
    assert x.grad is not None and w.grad is not None and b.grad is not None
