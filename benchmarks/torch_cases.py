"""PyTorch variants: fused glu, unfused KMR-style formula, addmm + F.glu, torch.compile, GEMM
floors."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import glu_kernels
from benchmarks.cases import Shape, memory_cases
from benchmarks.peak_memory import peak_bytes
from benchmarks.timing import fastest
from benchmarks.variants import COMPILED, FLOOR, FUSED, PACKED, UNFUSED, Variant
from glu_kernels.backends import torch as torch_backend
from glu_kernels.backends.torch import _transposed_copy

_ACT = {
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "relu": torch.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda g: F.gelu(g, approximate="tanh"),
    "linear": lambda g: g,
}


def tensors(shape: Shape, dtype: str, seed: int = 0, device: str = "cpu") -> dict:
    """x, packed (W2, b2) and split (W, V, bw, bv) weights with w ~ 1/sqrt(D), and a cotangent."""
    gen = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    b_, d, u = shape.batch, shape.features, shape.units

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=gen) * scale).to(device=device, dtype=dt)

    w2, b2 = r(d, 2 * u, scale=1 / math.sqrt(d)), r(2 * u, scale=0.1)
    return {
        "x": r(b_, d),
        "w2": w2,
        "b2": b2,
        "w": w2[:, :u].contiguous(),
        "v": w2[:, u:].contiguous(),
        "bw": b2[:u].contiguous(),
        "bv": b2[u:].contiguous(),
        "dy": r(b_, u),
        "dh": r(b_, 2 * u),
    }


def unfused(x, w, v, bw, bv, activation="sigmoid"):
    """What a KMR-style layer computes: two Dense layers, activation, multiply."""
    return torch.addmm(bw, x, w) * _ACT[activation](torch.addmm(bv, x, v))


def packed(x, w2, b2, activation="sigmoid"):
    h = torch.addmm(b2, x, w2)
    if activation == "sigmoid":
        return F.glu(h, dim=-1)
    a, g = h.chunk(2, dim=-1)
    return a * _ACT[activation](g)


_COMPILED: dict = {}


def _compiled(train: bool):
    # dynamic=True: one graph for every shape of a dtype (each compile costs ~10 s on 2 cores)
    key = train
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(unfused, dynamic=True)
    return _COMPILED[key]


def _grad_step(fn, inputs, dy):
    def step():
        leaves = [t.detach().requires_grad_() for t in inputs]
        out = fn(*leaves)
        return torch.autograd.grad(out, leaves, dy)

    return step


def _synchronised(fn, device: str):
    """``fn`` followed by a wait for the device's queue (a no-op on the CPU)."""
    if fn is None or torch.device(device).type != "cuda":
        return fn

    def call():
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return call


def variants(
    shape: Shape, dtype: str, activation: str, compile_: bool, device: str = "cpu"
) -> list[Variant]:
    """The variants on ``device`` ("cpu", or "cuda": every call then waits for the GPU)."""
    variants_ = _variants(shape, dtype, activation, compile_, device)
    for v in variants_:
        v.forward, v.train = _synchronised(v.forward, device), _synchronised(v.train, device)
    return variants_


def _faster_weight_product(x, dh):
    """``(name, product)``: ``x^T @ dh`` as the fastest of ``x.mT @ dh``,
    ``x.mT.contiguous() @ dh`` and the library's blocked copy of x^T: on AMX CPUs oneDNN's bfloat16
    GEMM reads a transposed left operand slowly, and glu copies x^T for large shapes (torch
    backend, _weight_gradient); the floor takes whichever form is fastest itself, so it stays a
    floor without depending on that rule. The name goes into the floor's label."""
    if not x.is_cpu:
        return "x.mT @ dh", lambda: x.mT @ dh
    with torch.no_grad():
        return fastest(
            {
                "x.mT @ dh": lambda: x.mT @ dh,
                "x.mT.contiguous() @ dh": lambda: x.mT.contiguous() @ dh,
                "blocked x^T copy @ dh": lambda: _transposed_copy(x) @ dh,
            }
        )


def _variants(
    shape: Shape, dtype: str, activation: str, compile_: bool, device: str
) -> list[Variant]:
    t = tensors(shape, dtype, device=device)
    x, w2, b2, w, v, bw, bv, dy, dh = (
        t[k] for k in ("x", "w2", "b2", "w", "v", "bw", "bv", "dy", "dh")
    )
    glu = glu_kernels.glu
    # Forward calls are bare: no input requires grad (a `with torch.no_grad()` around each call
    # would add ~2 us to every variant, which at 32x16->8 pulls every ratio towards 1).
    out = [
        Variant(
            FUSED,
            "glu_kernels.glu",
            lambda: glu(x, w2, b2, activation=activation),
            _grad_step(lambda x_, w_, b_: glu(x_, w_, b_, activation=activation), (x, w2, b2), dy),
        ),
        Variant(
            UNFUSED,
            "addmm x2, act, mul; autograd",
            lambda: unfused(x, w, v, bw, bv, activation),
            _grad_step(lambda *a: unfused(*a, activation), (x, w, v, bw, bv), dy),
        ),
        Variant(
            PACKED,
            "addmm + F.glu" if activation == "sigmoid" else "addmm + chunk, act, mul",
            lambda: packed(x, w2, b2, activation),
            _grad_step(lambda *a: packed(*a, activation), (x, w2, b2), dy),
        ),
    ]
    if compile_:
        fwd_c, train_c = _compiled(False), _compiled(True)
        out.append(
            Variant(
                COMPILED,
                "torch.compile(unfused, dynamic=True)",
                lambda: fwd_c(x, w, v, bw, bv, activation),
                _grad_step(lambda *a: train_c(*a, activation), (x, w, v, bw, bv), dy),
            )
        )

    product_name, weight_product = _faster_weight_product(x, dh)

    def floor_train():
        return x @ w2, dh @ w2.mT, weight_product()

    # the forward floor: the fastest way to compute the products, with or without the bias, as
    # one GEMM or two of half width (at 32x16->8 bfloat16 oneDNN takes 5x longer for one N = 16
    # GEMM than for two of N = 8)
    forward_forms = {
        "addmm(b, x, [W|V])": lambda: torch.addmm(b2, x, w2),
        "x @ [W|V]": lambda: x @ w2,
        "addmm(bw, x, W), addmm(bv, x, V)": lambda: (torch.addmm(bw, x, w), torch.addmm(bv, x, v)),
    }
    forward_name, _ = fastest({k: _synchronised(f, device) for k, f in forward_forms.items()})
    out.append(
        Variant(
            FLOOR,
            f"{forward_name}; train: x@W2, dh@W2^T, x^T@dh (as {product_name})",
            forward_forms[forward_name],
            floor_train,
        )
    )
    return out


def _without_scratch(fn):
    """``fn``, each call starting without glu's per-thread float32 scratch arena (torch backend,
    _float32_scratch), so that a peak counts the arena the step needs instead of finding it made."""

    def call():
        torch_backend._SCRATCH.__dict__.pop("arena", None)
        return fn()

    return call


def saved_bytes(shape: Shape, dtype: str, activation: str) -> dict:
    """Bytes autograd keeps for backward (saved-tensor hooks), per variant; x/w/b counted apart."""
    t = tensors(shape, dtype)
    res = {}
    cases = memory_cases(glu_kernels.glu, unfused, packed, activation)
    bu = shape.batch * shape.units
    for name, (fn, keys) in cases.items():
        leaves = [t[k].detach().requires_grad_() for k in keys]
        inputs = {id(l_.untyped_storage()) for l_ in leaves}
        in_ptrs = {l_.untyped_storage().data_ptr() for l_ in leaves}
        seen: dict[int, int] = {}
        largest_other = 0

        def pack(tensor):
            nonlocal largest_other
            st = tensor.untyped_storage()
            ptr = st.data_ptr()
            if ptr not in seen:
                seen[ptr] = st.nbytes()
                if ptr not in in_ptrs:
                    largest_other = max(largest_other, tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s):
            out = fn(*leaves)
        del out
        total = sum(seen.values())
        beyond = sum(n for p, n in seen.items() if p not in in_ptrs)
        res[name] = {
            "total_bytes": total,
            "activation_bytes": beyond,
            "largest_saved_non_input_elems": largest_other,
            "B*U": bu,
            # a whole training step (forward, backward to dx, dW, db) above the inputs' memory,
            # glu's float32 scratch arena included (made afresh in the measured step)
            "peak_step_bytes": peak_bytes(
                _without_scratch(_grad_step(fn, [t[k] for k in keys], t["dy"]))
            ),
        }
        del inputs
    return res
