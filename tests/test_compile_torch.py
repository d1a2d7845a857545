"""PyTorch: torch.compile, the torch.library registration, torch.func.vmap and CPU autocast.

What is checked, and why this way:

* ``torch.compile(fullgraph=True)``: fullgraph turns any graph break into an error, and a
  capturing backend asserts that the graph holds the custom op ``glu_kernels::glu`` (opaque to the
  compiler: its fake kernel gives shapes, its registered autograd the backward graph) on the grad
  path, and plain ATen ops on the inference path. Most cases use ``backend="aot_eager"``: it runs
  Dynamo and AOTAutograd (the parts that can break on our op: tracing, fake tensors, the joint
  forward/backward graph) but not Inductor's C++ code generation, which costs seconds per graph on
  this 2-core machine. One case runs Inductor end to end (it needs a C++ compiler).
* ``torch.library.opcheck`` on ``glu_op``: schema, fake kernel, autograd registration, AOT dispatch.
  gradcheck/gradgradcheck in float64 go through the op itself (the core suite checks ``glu``).
* ``torch.func.vmap`` over x, and over per-example weights (the registered vmap rule); batched
  cotangents (``is_grads_batched``, ``jacobian(vectorize=True)``), which vmap the backward.
* CPU autocast: ``glu`` under ``torch.autocast("cpu", dtype)`` behaves like a matmul: floating
  inputs (but float64) are cast to the autocast dtype, so float32 parameters with float32 or
  bfloat16 activations work, and the result is in the autocast dtype; the grad path (custom op) and
  the inference path (kernel called directly) agree; the op called directly has an autocast rule
  (bfloat16).
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import glu_kernels as gk  # noqa: E402
from glu_kernels.backends.torch import glu_op  # noqa: E402
from glu_kernels.reference import glu_reference, glu_reference_vjp  # noqa: E402

ACTIVATIONS = ("sigmoid", "silu", "gelu", "gelu_tanh", "relu", "linear")
GLU_OP = torch.ops.glu_kernels.glu.default
F64 = dict(rtol=1e-10, atol=1e-12)

# Dynamo traces through functools caches (glu's validation cache) and says so once per process.
pytestmark = pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools:UserWarning")


def _inputs(*, lead=(3, 5), d=8, u=6, w3=True, bias=True, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, 2, u, generator=g, dtype=torch.float64) / d**0.5
    w = w if w3 else w.reshape(d, 2 * u)
    b = torch.randn(2, u, generator=g, dtype=torch.float64) * 0.1 if bias else None
    b = b if b is None or w3 else b.reshape(2 * u)
    cast = lambda t: None if t is None else t.to(dtype).requires_grad_()  # noqa: E731
    return cast(x), cast(w), cast(b)


def _leaves(*ts):
    return [t for t in ts if t is not None]


class _GraphCapture:
    """A torch.compile backend that records the ops of every graph it is given (forward, and the
    backward graph too under AOTAutograd), then runs them with aot_eager."""

    def __init__(self):
        self.frames = 0
        self.targets: list = []

    def __call__(self, gm, example_inputs):
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        self.frames += 1

        def record(graph_module, _inputs):
            self.targets += [n.target for n in graph_module.graph.nodes if n.op == "call_function"]
            return make_boxed_func(graph_module.forward)

        return aot_autograd(fw_compiler=record, bw_compiler=record)(gm, example_inputs)


def _run(fn, x, w, b):
    """Forward value and gradients of ``sum(fn(x, w, b) * dy)`` w.r.t. every input given."""
    out = fn(x, w, b)
    dy = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    grads = torch.autograd.grad(out, _leaves(x, w, b), dy)
    return out, grads


# --------------------------------------------------------------------------------------------------
# torch.compile


@pytest.mark.parametrize(
    "activation,save,bias",
    [
        ("sigmoid", "activations", True),
        ("silu", "input", False),
        ("gelu_tanh", "activations", True),
    ],
)
def test_torch_compile_fullgraph_matches_eager(activation, save, bias):
    torch._dynamo.reset()
    x, w, b = _inputs(bias=bias)

    def fn(x, w, b):
        return gk.glu(x, w, b, activation=activation, save=save)

    capture = _GraphCapture()
    compiled = torch.compile(fn, fullgraph=True, backend=capture)
    out_c, grads_c = _run(compiled, x, w, b)
    out_e, grads_e = _run(fn, x, w, b)

    assert capture.frames == 1
    assert GLU_OP in capture.targets, "the grad path must reach the compiler as the custom op"
    # Same kernels on both sides (aot_eager does not generate code): equal to the last bit.
    torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)
    for gc, ge in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(gc, ge, rtol=0, atol=0)


def test_torch_compile_fullgraph_with_parameters():
    """nn.Parameter weights (a tensor subclass; what Keras' torch backend and nn.Modules pass)."""
    torch._dynamo.reset()
    x, w, b = _inputs()
    w, b = torch.nn.Parameter(w.detach()), torch.nn.Parameter(b.detach())

    def fn(x, w, b):
        return gk.glu(x, w, b, activation="silu")

    capture = _GraphCapture()
    out_c, grads_c = _run(torch.compile(fn, fullgraph=True, backend=capture), x, w, b)
    out_e, grads_e = _run(fn, x, w, b)
    assert capture.frames == 1
    torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)
    for gc, ge in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(gc, ge, rtol=0, atol=0)


def test_torch_compile_inference_path_has_no_custom_op():
    torch._dynamo.reset()
    x, w, b = (t.detach() for t in _inputs())
    capture = _GraphCapture()
    compiled = torch.compile(
        lambda x, w, b: gk.glu(x, w, b, activation="silu"), fullgraph=True, backend=capture
    )
    with torch.no_grad():
        out = compiled(x, w, b)
        expected = gk.glu(x, w, b, activation="silu")
    assert capture.frames == 1 and GLU_OP not in capture.targets
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.skipif(
    not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")),
    reason="Inductor on CPU needs a C++ compiler",
)
def test_torch_compile_inductor_forward_backward():
    """Inductor end to end (the default backend): generated C++ for everything around the op."""
    torch._dynamo.reset()
    x, w, b = _inputs(lead=(4, 3), d=16, u=8)

    def fn(x, w, b):
        return gk.glu(torch.tanh(x), w, b, activation="silu") * 2.0

    out_c, grads_c = _run(torch.compile(fn, fullgraph=True), x, w, b)
    out_e, grads_e = _run(fn, x, w, b)
    # Inductor fuses and reorders the elementwise code around the op: float32 rounding differences.
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-6)
    for gc, ge in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(gc, ge, rtol=1e-5, atol=1e-5)


def test_torch_compile_varying_batch_size_needs_no_recompile_per_size():
    """A second batch size makes Dynamo mark the batch dimension dynamic (one recompile); later
    sizes reuse that graph. Validation must neither break the graph nor specialize the size."""
    torch._dynamo.reset()
    _, w, b = _inputs(d=4, u=3)
    capture = _GraphCapture()
    compiled = torch.compile(
        lambda x: gk.glu(x, w, b, activation="gelu"), fullgraph=True, backend=capture
    )
    for n in (2, 3, 5, 7):
        x = torch.randn(n, 6, 4, requires_grad=True)
        out_c, (dx_c,) = _run(lambda x, w_, b_: compiled(x), x, None, None)
        out_e, (dx_e,) = _run(lambda x, w_, b_: gk.glu(x, w, b, activation="gelu"), x, None, None)
        torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)
        torch.testing.assert_close(dx_c, dx_e, rtol=0, atol=0)
    assert capture.frames == 2


def test_torch_compile_first_call_of_the_process_compiles_once():
    """glu traced before any eager call (a fresh process): two identical calls, one graph. Nothing
    the first trace sees may change after it (a lazily set module global did: one recompile)."""
    script = (
        "import torch, glu_kernels as gk\n"
        "from torch._dynamo.testing import CompileCounter\n"
        "w, b, x = torch.randn(16, 16), torch.randn(16), torch.randn(4, 16)\n"
        "counter = CompileCounter()\n"
        "compiled = torch.compile(lambda x: gk.glu(x, w, b), fullgraph=True, backend=counter)\n"
        "compiled(x)\n"
        "compiled(x)\n"
        "print(counter.frame_count)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    assert run.stdout.split()[-1] == "1", run.stdout + run.stderr


def test_torch_compile_dynamic_true():
    torch._dynamo.reset()
    x, w, b = _inputs(d=4, u=3)
    compiled = torch.compile(
        lambda x, w, b: gk.glu(x, w, b), fullgraph=True, dynamic=True, backend="aot_eager"
    )
    for n in (3, 4):
        x = torch.randn(n, 2, 4, requires_grad=True)
        out_c, grads_c = _run(compiled, x, w, b)
        out_e, grads_e = _run(gk.glu, x, w, b)
        torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)
        for gc, ge in zip(grads_c, grads_e, strict=True):
            torch.testing.assert_close(gc, ge, rtol=0, atol=0)


def test_torch_compile_under_autocast_matches_eager():
    torch._dynamo.reset()
    x, w, b = _inputs()

    def fn(x, w, b):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return gk.glu(x, w, b, activation="silu")

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out_c, grads_c = _run(compiled, x, w, b)
    out_e, grads_e = _run(fn, x, w, b)
    assert out_c.dtype == torch.bfloat16
    torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)
    for gc, ge, t in zip(grads_c, grads_e, _leaves(x, w, b), strict=True):
        assert gc.dtype == t.dtype == torch.float32
        torch.testing.assert_close(gc, ge, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# torch.library registration: opcheck, gradcheck, gradgradcheck


@pytest.mark.parametrize(
    "activation,save,bias,dtype",
    [(a, "activations", True, torch.float32) for a in ACTIVATIONS]
    + [
        ("sigmoid", "input", False, torch.float32),
        ("silu", "input", True, torch.float64),
        ("gelu", "activations", False, torch.float64),
        ("relu", "input", True, torch.bfloat16),
    ],
)
def test_torch_opcheck(activation, save, bias, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 4, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(4, 6, generator=g) / 2).to(dtype).requires_grad_()
    b = (torch.randn(6, generator=g) / 4).to(dtype).requires_grad_() if bias else None
    torch.library.opcheck(glu_op, (x, w, b, activation, save))
    # and without any input requiring grad (the op's no-autograd path)
    torch.library.opcheck(
        glu_op, (x.detach(), w.detach(), None if b is None else b.detach(), activation, save)
    )


@pytest.mark.parametrize("save", ["activations", "input"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_torch_op_gradcheck_gradgradcheck_float64(activation, save):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    # Both outputs: out and the pre-activation h (so h's cotangent path is checked too).
    fn = lambda x, w, b: glu_op(x, w, b, activation, save)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_torch_op_schema_and_fake_kernel():
    schema = str(GLU_OP._schema)
    assert schema.startswith("glu_kernels::glu(Tensor x, Tensor w, Tensor? b, str activation")
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        out, h = glu_op(torch.empty(7, 4), torch.empty(4, 10), None, "silu", "activations")
    assert tuple(out.shape) == (7, 5) and tuple(h.shape) == (7, 10)


# --------------------------------------------------------------------------------------------------
# torch.func.vmap


@pytest.mark.parametrize("requires_grad", [False, True], ids=["kernel_path", "op_path"])
def test_torch_vmap_over_x(requires_grad):
    """Shared weights: the op's vmap rule folds the vmapped axis into the batch (one GEMM)."""
    x, w, b = (t.detach().double().requires_grad_(requires_grad) for t in _inputs(lead=(4, 5)))
    out = torch.func.vmap(lambda xi: gk.glu(xi, w, b, activation="gelu"))(x)
    x64, w64, b64 = (t.detach().numpy() for t in (x, w, b))
    np.testing.assert_allclose(out.detach().numpy(), glu_reference(x64, w64, b64, "gelu"), **F64)
    if requires_grad:
        dy = torch.randn_like(out)
        got = torch.autograd.grad(out, (x, w, b), dy)
        for g_, want in zip(got, glu_reference_vjp(x64, w64, b64, dy.numpy(), "gelu"), strict=True):
            np.testing.assert_allclose(g_.numpy(), want, **F64)


@pytest.mark.parametrize("x_batched", [True, False])
def test_torch_vmap_over_per_example_weights(x_batched):
    n = 3
    x, _, _ = _inputs(lead=(n, 5))
    ws = torch.randn(n, 8, 2, 6) / 8**0.5
    bs = torch.randn(n, 2, 6) * 0.1
    x = x.detach() if x_batched else x.detach()[0]
    in_dims = (0 if x_batched else None, 0, 0)
    out = torch.func.vmap(
        lambda xi, wi, bi: gk.glu(xi, wi, bi, activation="silu"), in_dims=in_dims
    )(x, ws, bs)
    for i in range(n):
        xi = x[i] if x_batched else x
        expected = glu_reference(xi.numpy(), ws[i].numpy(), bs[i].numpy(), "silu")
        np.testing.assert_allclose(out[i].numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "x_shape, w_shape, b_shape, in_dims",
    [
        ((3, 5, 4), (4, 0), None, (0, None)),  # U = 0
        ((0, 5, 4), (4, 6), (6,), (0, None, None)),  # no examples
        ((0, 5, 4), (0, 4, 6), (0, 6), (0, 0, 0)),  # no examples, per-example weights
        ((5, 4), (4, 6, 0), None, (None, 2)),  # no examples, the batch on w's last axis
    ],
    ids=["no_units", "no_examples", "no_examples_per_example_w", "no_examples_w_only"],
)
@pytest.mark.parametrize("requires_grad", [False, True], ids=["kernel_path", "op_path"])
def test_torch_vmap_of_zero_size(x_shape, w_shape, b_shape, in_dims, requires_grad):
    """Empty vmap batches and U = 0 give the unfused formula's shapes, and a gradient."""
    args = [torch.randn(*s, requires_grad=requires_grad) for s in (x_shape, w_shape)]
    if b_shape is not None:
        args.append(torch.randn(*b_shape, requires_grad=requires_grad))

    def unfused(x, w, b=None):
        return F.glu(x @ w + (0 if b is None else b), dim=-1)

    out = torch.func.vmap(gk.glu, in_dims=in_dims)(*args)
    assert out.shape == torch.func.vmap(unfused, in_dims=in_dims)(*args).shape
    if requires_grad:
        grads = torch.autograd.grad(out.sum(), args)
        assert [g.shape for g in grads] == [a.shape for a in args]


def test_torch_vmap_output_is_differentiable():
    """vmap of the grad path (the op's vmap rule), then ordinary autograd through it."""
    n = 3
    x = torch.randn(n, 4, 8, dtype=torch.float64, requires_grad=True)
    ws = (torch.randn(n, 8, 12, dtype=torch.float64) / 8**0.5).requires_grad_()
    out = torch.func.vmap(lambda xi, wi: gk.glu(xi, wi, activation="gelu_tanh"))(x, ws)
    dy = torch.randn_like(out)
    dx, dw = torch.autograd.grad(out, (x, ws), dy)
    for i in range(n):
        rdx, rdw, _ = glu_reference_vjp(
            x[i].detach().numpy(), ws[i].detach().numpy(), None, dy[i].numpy(), "gelu_tanh"
        )
        np.testing.assert_allclose(dx[i].numpy(), rdx, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dw[i].numpy(), rdw, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_torch_batched_cotangents_match_reference(activation):
    """``autograd.grad(is_grads_batched=True)`` vmaps the backward over a batch of cotangents (the
    fast backward's out= and scratch writes cannot be batched: the whole-tensor one runs)."""
    x, w, b = (t.detach().double().requires_grad_() for t in _inputs(lead=(5,), w3=False))
    out = gk.glu(x, w, b, activation=activation)
    cotangents = torch.randn(
        4, *out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5)
    )
    got = torch.autograd.grad(out, (x, w, b), cotangents, is_grads_batched=True)
    x64, w64, b64 = (t.detach().numpy() for t in (x, w, b))
    for i, dy in enumerate(cotangents.numpy()):
        want = glu_reference_vjp(x64, w64, b64, dy, activation)
        for g_, ref in zip(got, want, strict=True):
            np.testing.assert_allclose(g_[i].numpy(), ref, **F64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_vectorized_jacobian_matches_the_looped_one(dtype):
    x, w, b = _inputs(lead=(6,), w3=False, dtype=dtype)
    x, w, b = x.detach(), w.detach(), b.detach()
    jac = torch.autograd.functional.jacobian

    def fn(x_, w_):
        return gk.glu(x_, w_, b, activation="silu")

    vectorized = jac(fn, (x, w), vectorize=True)
    looped = jac(fn, (x, w))
    for v, l_ in zip(vectorized, looped, strict=True):
        torch.testing.assert_close(v, l_)


# torch.func's differentiating transforms and forward-mode AD: glu is plain ATen calls there (the
# custom op's autograd formula serves neither: grad transforms refuse it, pytorch#168393, and jvp
# transforms passed zero tangents through it). Oracle: the same derivatives of the unfused formula.


def _unfused(x, w, b, activation):
    acts = {
        "sigmoid": torch.sigmoid,
        "silu": torch.nn.functional.silu,
        "gelu": torch.nn.functional.gelu,
        "gelu_tanh": lambda g: torch.nn.functional.gelu(g, approximate="tanh"),
        "relu": torch.relu,
        "linear": lambda g: g,
    }
    h = x @ w.reshape(w.shape[0], -1) + b.reshape(-1)
    a, g = h.chunk(2, dim=-1)
    return a * acts[activation](g)


def _f64_inputs():
    return (t.detach().double() for t in _inputs(lead=(4,), w3=True))


def test_torch_compile_dynamic_16bit_training_compiles_once_across_sizes():
    """The op's 16-bit backward sizes its float32 scratch by h's size: under the compiler that
    test must not run on symbolic sizes (it guarded on them: one recompile as h grew past the
    arena's threshold)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    w = (torch.randn(32, 64) / 6).bfloat16().requires_grad_()
    compiled = torch.compile(
        lambda x: gk.glu(x, w, activation="silu"), dynamic=True, fullgraph=True, backend=counter
    )
    for rows in (3, 17, 40, 2048, 4096):  # h of 192 ... 262144 elements
        compiled(torch.randn(rows, 32).bfloat16().requires_grad_()).sum().backward()
    assert counter.frame_count == 1


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # vmap of glu's jvp
@pytest.mark.parametrize(
    "transform", ["grad", "jacrev", "jvp", "jacfwd", "hessian", "vmap_grad", "grad_vmap"]
)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_torch_func_transforms_match_the_unfused_formula(transform, activation):
    x, w, b = _f64_inputs()
    tangent = torch.linspace(-1, 1, x.numel(), dtype=x.dtype).reshape(x.shape)

    def derivative(fn):
        if transform == "grad":
            return torch.func.grad(lambda w_: fn(x, w_, b).sum())(w)
        if transform == "jacrev":
            return torch.func.jacrev(fn, argnums=(0, 1, 2))(x, w, b)
        if transform == "jvp":
            return torch.func.jvp(lambda x_: fn(x_, w, b), (x,), (tangent,))
        if transform == "jacfwd":
            return torch.func.jacfwd(lambda x_: fn(x_, w, b))(x)
        if transform == "hessian":
            return torch.func.hessian(lambda x_: fn(x_, w, b).square().sum())(x[0])
        if transform == "vmap_grad":
            return torch.func.vmap(torch.func.grad(lambda xi: fn(xi, w, b).sum()))(x)
        # grad over vmap: the grad transform is below the top of the interpreter stack
        return torch.func.grad(lambda w_: torch.func.vmap(lambda xi: fn(xi, w_, b))(x).sum())(w)

    got = derivative(lambda *a: gk.glu(*a, activation=activation))
    want = derivative(lambda *a: _unfused(*a, activation))
    for g_, ref in zip(
        torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want), strict=True
    ):
        assert ref.abs().max() > 0  # a zero derivative would pass trivially
        torch.testing.assert_close(g_, ref, **F64)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_torch_forward_ad_dual_tensors_carry_tangents(requires_grad):
    import torch.autograd.forward_ad as fwad

    x, w, b = _f64_inputs()
    tangent = torch.linspace(-1, 1, x.numel(), dtype=x.dtype).reshape(x.shape)
    with fwad.dual_level():
        dual = fwad.make_dual(x.clone().requires_grad_(requires_grad), tangent)
        got = fwad.unpack_dual(gk.glu(dual, w, b, activation="silu")).tangent
    _, want = torch.func.jvp(lambda x_: _unfused(x_, w, b, "silu"), (x,), (tangent,))
    torch.testing.assert_close(got, want, **F64)


@pytest.mark.parametrize("transform", ["vmap", "grad", "jvp", "vmap_grad"])
def test_torch_func_transforms_compile_fullgraph(transform):
    """torch.compile(fullgraph=True) around torch.func transforms of glu: no graph break (the
    transform check is taken at trace time)."""
    x, w, b = _f64_inputs()
    tangent = torch.ones_like(x)

    def program(fn):
        if transform == "vmap":
            return torch.func.vmap(lambda xi: fn(xi, w, b))(x)
        if transform == "grad":
            return torch.func.grad(lambda w_: fn(x, w_, b).sum())(w)
        if transform == "jvp":
            return torch.func.jvp(lambda x_: fn(x_, w, b), (x,), (tangent,))[1]
        return torch.func.vmap(torch.func.grad(lambda xi: fn(xi, w, b).sum()))(x)

    torch._dynamo.reset()
    got = torch.compile(lambda: program(gk.glu), fullgraph=True, backend="aot_eager")()
    want = program(lambda *a: _unfused(*a, "sigmoid"))
    torch.testing.assert_close(got, want, **F64)


def test_torch_func_vmap_alone_keeps_the_custom_op(monkeypatch):
    """Only differentiating transforms take the plain ATen path: vmap keeps the op's vmap rule."""
    from glu_kernels.backends import torch as torch_backend

    x, w, b = _f64_inputs()
    paths = []
    for name in ("glu_op", "_recordable_forward"):
        real = getattr(torch_backend, name)
        monkeypatch.setattr(
            torch_backend, name, lambda *a, _n=name, _r=real: paths.append(_n) or _r(*a)
        )
    out = torch.func.vmap(lambda xi: gk.glu(xi, w, b))(x)
    assert paths and set(paths) == {"glu_op"}  # (the op's vmap rule calls it again, unbatched)
    torch.testing.assert_close(out, _unfused(x, w, b, "sigmoid"), **F64)
    paths.clear()
    torch.func.grad(lambda w_: gk.glu(x, w_, b).sum())(w)
    assert paths == ["_recordable_forward"]


# --------------------------------------------------------------------------------------------------
# CPU autocast


@pytest.mark.parametrize("requires_grad", [True, False], ids=["op_path", "kernel_path"])
@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
def test_torch_autocast_runs_in_autocast_dtype(autocast_dtype, requires_grad):
    x, w, b = (t.detach().requires_grad_(requires_grad) for t in _inputs())
    with torch.autocast("cpu", dtype=autocast_dtype):
        out = gk.glu(x, w, b, activation="gelu")
    assert out.dtype == autocast_dtype
    assert out.requires_grad == requires_grad
    # Exactly glu on the inputs cast first, as autocast casts a matmul's inputs.
    with torch.no_grad():
        expected = gk.glu(
            x.to(autocast_dtype), w.to(autocast_dtype), b.to(autocast_dtype), activation="gelu"
        )
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_torch_autocast_float32_params_train():
    """The usual mixed-precision step: float32 parameters, an activation already in bfloat16 (from
    an autocast Linear), loss and backward outside the autocast region. Gradients are float32."""
    torch.manual_seed(3)
    linear = torch.nn.Linear(8, 8)
    w = torch.nn.Parameter(torch.randn(8, 2, 6) / 8**0.5)
    b = torch.nn.Parameter(torch.zeros(2, 6))
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = linear(x)
        assert hidden.dtype == torch.bfloat16
        out = gk.glu(hidden, w, b, activation="silu")
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    for p in (w, b, linear.weight):
        assert p.grad is not None and p.grad.dtype == torch.float32
        assert torch.isfinite(p.grad).all()
    # The gradient is the one of glu on the bfloat16-cast weights (to bfloat16 accuracy).
    w16 = w.detach().to(torch.bfloat16).requires_grad_()
    out16 = gk.glu(hidden.detach(), w16, b.detach().to(torch.bfloat16), activation="silu")
    out16.float().square().sum().backward()
    torch.testing.assert_close(w.grad, w16.grad.float(), rtol=0, atol=0)


def test_torch_autocast_op_called_directly():
    x, w, b = (t.detach() for t in _inputs(w3=False))
    x2 = x.reshape(-1, x.shape[-1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h = torch.ops.glu_kernels.glu(x2, w, b, "sigmoid", "activations")
    assert out.dtype == h.dtype == torch.bfloat16
    with torch.no_grad():
        expected = gk.glu(x2.bfloat16(), w.bfloat16(), b.bfloat16())
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("device", ["cpu", "mps", "xpu"])
def test_torch_autocast_is_seen_on_every_device_type(device):
    """glu notices autocast on the device of x, also where torch._C._is_any_autocast_enabled()
    does not look (MPS). No such device here: a stand-in with the attributes the check reads, and
    the autocast state that torch.autocast(device, float16) sets."""
    from types import SimpleNamespace

    from glu_kernels.backends import torch as torch_backend

    on = SimpleNamespace(is_cpu=device == "cpu", is_cuda=False, device=torch.device(device))
    enabled, dtype = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
    assert torch_backend._autocast_dtype(on) is None
    torch.set_autocast_enabled(device, True)
    torch.set_autocast_dtype(device, torch.float16)
    try:
        assert torch_backend._autocast_dtype(on) == torch.float16
    finally:
        torch.set_autocast_enabled(device, enabled)
        torch.set_autocast_dtype(device, dtype)


def test_torch_autocast_keeps_float64_and_mixed_dtype_errors():
    x, w, b = (t.detach() for t in _inputs())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # autocast leaves float64 alone (as for a matmul): float64 with float32 is still mixed
        with pytest.raises(TypeError, match="share one dtype"):
            gk.glu(x.double(), w, b)
        out = gk.glu(x.double(), w.double(), b.double())
        assert out.dtype == torch.float64
    # outside autocast, mixed dtypes are an error as always
    with pytest.raises(TypeError, match="share one dtype"):
        gk.glu(x.bfloat16(), w, b)
