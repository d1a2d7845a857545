"""torch runs its epilogue and its plain (non-create_graph) backward pass on row blocks of about
``_BLOCK_BYTES`` of float32 (1 MiB), so the temporaries stay in cache; 16-bit inputs in float32,
rounded once; db summed block by block. The property tests' shapes never make h that large, so no
other test sees more than one block: here h spans two full blocks and a partial one, in every dtype,
forward and backward (dx, dw and the per-block db).
"""

from __future__ import annotations

import backend_arrays as ba
import numpy as np
import pytest
from strategies import ACTIVATIONS
from tolerances import assert_close, gradient_scales, output_scale

from glu_kernels.reference import glu_reference, glu_reference_vjp

pytest.importorskip("torch")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", ba.DTYPES["torch"])
def test_torch_row_blocks_cover_every_row(dtype, activation):
    from glu_kernels.backends import torch as torch_backend

    d, u = 8, 128
    step = max(8, torch_backend._BLOCK_BYTES // (4 * 2 * u))  # rows per block, as _row_blocks
    rows = 2 * step + 37  # two full blocks and a partial one
    # Positive data: h, f(g), f'(g) and dh are all positive, so the sums over rows (dw, db) cannot
    # cancel, and a block left out moves them by a large fraction of their error scale even in
    # bfloat16 (with random signs a dropped block can hide within sqrt(rows) of cancellation).
    rng = np.random.default_rng(7)
    x = ba.round_to(rng.uniform(0.5, 1.0, (rows, d)), dtype)
    w = ba.round_to(rng.uniform(0.0, 1.0, (d, 2 * u)) * np.sqrt(3.0 / d), dtype)
    b = ba.round_to(rng.uniform(0.0, 1.0, 2 * u), dtype)
    dy = ba.round_to(rng.uniform(0.5, 1.0, (rows, u)), dtype)

    out = ba.to_numpy64(ba.forward("torch", x, w, b, dtype, activation=activation))
    scale = output_scale(x, w, b, activation)
    assert_close(out, glu_reference(x, w, b, activation), scale, dtype, f"torch {activation} out")

    _, dx, dw, db = ba.gradients("torch", x, w, b, dy, dtype, activation=activation)
    refs = glu_reference_vjp(x, w, b, dy, activation)
    scales = gradient_scales(x, w, b, dy, activation, dtype)
    for name, got, ref, s in zip(("dx", "dw", "db"), (dx, dw, db), refs, scales, strict=True):
        assert_close(got, ref, s, dtype, f"torch {activation} {name}")


def test_torch_float32_scratch_is_one_reused_arena():
    """16-bit blocks are widened into one per-thread float32 arena that grows when needed and is
    reused across calls (fresh ~1 MiB temporaries per block cost more in page faults than math)."""
    import torch

    from glu_kernels.backends import torch as torch_backend

    rows = torch_backend._ARENA_MIN_ELEMENTS // 256  # at the threshold: the arena is used
    small = torch.full((rows, 256), 1.5, dtype=torch.bfloat16)
    big = torch.arange(2 * rows * 256, dtype=torch.float32).reshape(2 * rows, 256).bfloat16()
    torch_backend._float32_scratch(small)
    widened, empty = torch_backend._float32_scratch(big, empty=(torch.Size((2 * rows, 256)),))
    assert widened.dtype == torch.float32 and empty.shape == (2 * rows, 256)
    torch.testing.assert_close(widened, big.float(), rtol=0, atol=0)
    again = torch_backend._float32_scratch(small)[0]
    assert again.data_ptr() == widened.data_ptr(), "the arena must be reused, not reallocated"
    torch.testing.assert_close(again, small.float(), rtol=0, atol=0)
    # below the threshold, a plain float32 copy: the arena is left alone
    tiny = torch.full((2, 4), -2.5, dtype=torch.bfloat16)
    copy = torch_backend._float32_scratch(tiny)[0]
    assert copy.data_ptr() != widened.data_ptr()
    torch.testing.assert_close(copy, tiny.float(), rtol=0, atol=0)
    torch.testing.assert_close(again, small.float(), rtol=0, atol=0)


def test_torch_float32_scratch_made_under_inference_mode_serves_training():
    """The arena outlives the call that made it: made under torch.inference_mode it must still be
    writable by a later training step (an inference tensor is read-only outside that mode)."""
    import torch

    import glu_kernels as gk
    from glu_kernels.backends import torch as torch_backend

    torch_backend._SCRATCH.__dict__.pop("arena", None)  # the next widening makes a new arena
    x = torch.randn(256, 8).to(torch.bfloat16)  # h: 256 x 256, enough to use the arena
    w = (torch.randn(8, 256) / 3).to(torch.bfloat16)
    with torch.inference_mode():
        expected = gk.glu(x, w, activation="silu")
    xr = x.clone().requires_grad_()
    out = gk.glu(xr, w, activation="silu")
    out.float().sum().backward()
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=0)
    assert xr.grad is not None and torch.isfinite(xr.grad.float()).all()


def test_row_blocks_only_on_the_cpu():
    """Blocks serve the CPU's cache; on other devices each pass is one block (one kernel launch)."""
    import torch

    from glu_kernels.backends import torch as torch_backend

    rows = 4 * max(8, torch_backend._BLOCK_BYTES // (4 * 2 * 64))
    cpu = list(torch_backend._row_blocks(torch.empty(rows, 2 * 64)))
    assert len(cpu) == 4, cpu
    other = list(torch_backend._row_blocks(torch.empty(rows, 2 * 64, device="meta")))
    assert other == [slice(None)], other
