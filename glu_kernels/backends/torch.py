"""PyTorch backend: one ``addmm`` on the packed weight, ATen's fused kernels, and a custom op.

Inference (no input requires grad) calls the kernels directly. Eager training goes through an
``autograd.Function``; ``torch.compile`` and ``torch.func`` get the same forward and backward as the
custom op ``glu_kernels::glu``, registered with ``torch.library`` (fake kernel for meta/fake tensors
and the compiler, autograd formula, vmap rule). The backward recomputes ``act(g)`` from the saved
pre-activation ``h`` (or from x and w, with ``save="input"``). While ``torch.jit.trace`` or
``torch.export`` (and so the ONNX exporters) record, and under forward-mode AD and ``torch.func``'s
differentiating transforms, glu is plain whole-tensor ATen calls: a portable recording,
differentiated by autograd.

On the CPU the elementwise passes run on row blocks that stay in cache; on a GPU on whole tensors.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Sequence

import torch
import torch.autograd.forward_ad as _forward_ad
import torch.nn.functional as F
from torch import Tensor

from glu_kernels._activations import ACTIVATIONS, epilogue_backward
from glu_kernels._validate import GatedSpec, GluSpec

NAME = "torch"
DIFFERENTIABLE = True
ROUNDS_MATMUL_BEFORE_BIAS = False

_DTYPE_NAMES = {
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float32: "float32",
    torch.float64: "float64",
}


# torch.compiler.is_exporting is newer than the oldest torch glu supports (2.4); on a torch
# without it, exports record the paths of eager glu, as they did before glu asked
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)

_DIFFERENTIATING = frozenset(
    getattr(torch._C._functorch.TransformType, name) for name in ("Grad", "Jvp")
)


# torch.compile cannot trace the interpreter stack: it takes the answer at trace time (a transform
# is part of the traced program) instead of a graph break
@getattr(torch.compiler, "assume_constant_result", lambda f: f)
def _functorch_differentiates() -> bool:
    """Whether a ``torch.func`` transform that differentiates (grad, vjp, jacrev, jvp, jacfwd,
    hessian) is active, possibly under vmap. The custom op's autograd formula serves none of them:
    grad transforms refuse it (pytorch#168393), jvp transforms pass zero tangents through it."""
    stack = torch._C._functorch.get_interpreter_stack() or ()
    return any(interpreter.key() in _DIFFERENTIATING for interpreter in stack)


def shape(t: Tensor) -> tuple[int, ...]:
    size = t.shape  # a torch.Size, a tuple (subclass): hashes and compares as one
    if size and type(size[-1]) is Tensor:  # torch.jit.trace's sizes (cheaper than is_tracing())
        return _traced_shape(size)
    return size


def _traced_shape(size: torch.Size) -> tuple[int, ...]:
    """The sizes as numbers under ``torch.jit.trace``, where they are traced 0-d tensors (each
    comparison in validation warned that it bakes a constant). Validation only needs the weight's
    sizes, D and U, which are constants; glu keeps x's leading sizes traced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return tuple(int(d) for d in size)


def _autocast_dtype(t: Tensor) -> torch.dtype | None:
    """The dtype autocast gives matmuls on t's device, or None where autocast is off."""
    if (t.is_cpu or t.is_cuda) and not torch._C._is_any_autocast_enabled():
        # one C call for the common case (~0.07 us); it misses some device types' autocast (MPS's)
        return None
    device = "cpu" if t.is_cpu else t.device.type
    try:
        enabled = torch.is_autocast_enabled(device)
    except RuntimeError:  # a device type without autocast, e.g. "meta" (Keras traces models on it)
        return None
    return torch.get_autocast_dtype(device) if enabled else None


def dtype_name(t: Tensor) -> str:
    """The dtype glu computes t in: under autocast, the autocast dtype (see glu())."""
    autocast = _autocast_dtype(t)
    if autocast is not None and t.is_floating_point() and t.dtype != torch.float64:
        # autocast: glu casts its floating inputs (all but float64) like a matmul does; see glu().
        return _DTYPE_NAMES[autocast]
    return stored_dtype_name(t)


def stored_dtype_name(t: Tensor) -> str:
    """The dtype t holds: what elementwise ops (gated) compute in, autocast or not."""
    return _DTYPE_NAMES.get(t.dtype) or str(t.dtype).removeprefix("torch.")


class _Primitives:
    sigmoid = staticmethod(torch.sigmoid)
    tanh = staticmethod(torch.tanh)
    erfc = staticmethod(torch.erfc)
    exp = staticmethod(torch.exp)
    relu = staticmethod(torch.relu)

    @staticmethod
    def positive(g: Tensor) -> Tensor:
        return (g > 0).to(g.dtype)


PRIMITIVES = _Primitives()

# ATen's fused kernels for f(g) and for the gate gradient grad * f'(g); both are differentiable, so
# double backward works. Activations without an entry use the shared formula.
_FORWARD = {
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda g: F.gelu(g, approximate="tanh"),
    "relu": torch.relu,
}
_GATE_GRAD = {
    "sigmoid": lambda grad, g, f: torch.ops.aten.sigmoid_backward(grad, f),
    # aten::silu_backward has no derivative: under create_graph (double backward) use the formula.
    "silu": lambda grad, g, f: (
        grad * ACTIVATIONS["silu"].value_and_derivative(g, PRIMITIVES)[1]
        if torch.is_grad_enabled()
        else torch.ops.aten.silu_backward(grad, g)
    ),
    "gelu": lambda grad, g, f: torch.ops.aten.gelu_backward(grad, g),
    "gelu_tanh": lambda grad, g, f: torch.ops.aten.gelu_backward(grad, g, approximate="tanh"),
    "relu": lambda grad, g, f: torch.ops.aten.threshold_backward(grad, g, 0),
    "linear": lambda grad, g, f: grad,
}


def _is_half(t: Tensor) -> bool:
    return t.dtype in (torch.float16, torch.bfloat16)


def _preactivation(x2: Tensor, w2: Tensor, b: Tensor | None) -> Tensor:
    return x2 @ w2 if b is None else torch.addmm(b, x2, w2)


# Row blocking: the elementwise passes (not float32/float64 forwards: _epilogue) run on blocks of
# rows of about this many bytes of float32 h, so each block's temporaries (float32 copies of 16-bit
# inputs, f(g), ...) stay in the 2 MiB L2
# cache between the ops of a pass: the CPU analogue of a GPU epilogue fusion. In whole training
# steps (2-core CPU, 1024x256->256 and 2048x1024->1024) it measured 0.88x-1.04x the time of
# whole-tensor ops: a wash in speed, but no full-size float32 copy of a 16-bit h.
_BLOCK_BYTES = 1 << 20


def _row_blocks(h: Tensor) -> Sequence[slice]:
    """Slices of the rows of the 2-D ``h``, each about ``_BLOCK_BYTES`` of float32, on the CPU;
    elsewhere one block (a GPU pays a kernel launch per op and block, and gains nothing)."""
    if not h.is_cpu or torch.compiler.is_compiling():  # traced: the compiler fuses the pass
        return _WHOLE
    rows, step = h.shape[0], max(8, _BLOCK_BYTES // max(1, 4 * h.shape[1]))
    return _WHOLE if rows <= step else [slice(r, r + step) for r in range(0, rows, step)]


_WHOLE = (slice(None),)


def _epilogue(h: Tensor, activation: str) -> Tensor:
    """``a * f(g)`` for ``h = [a | g]``; 16-bit inputs are computed in float32 and rounded once."""
    if activation == "sigmoid":
        return F.glu(h, dim=-1)  # one fused pass; ATen computes 16-bit inputs in float32
    half = _is_half(h)
    # float32/float64: whole tensors, f(g) then an in-place multiply (SiLU, against row blocks:
    # 0.59x the time at 1024x512, 0.78x at 2048x2048, 0.92x at 4096x4096); 16-bit: row blocks, no
    # full-size float32 copy (4096x4096 bfloat16: 0.36x the whole-tensor time)
    blocks = _row_blocks(h) if half else _WHOLE
    if len(blocks) == 1:
        return _whole_epilogue(h, activation, half)
    units = h.shape[1] // 2
    out = h.new_empty(h.shape[0], units)
    for rows in blocks:
        hb = _float32_scratch(h[rows])[0]
        a, g = hb[:, :units], hb[:, units:]
        if activation in _FORWARD_INPLACE:  # g is our float32 copy: nothing else reads it
            f = _FORWARD_INPLACE[activation](g)
        else:
            f = _activate(g, activation) if activation != "linear" else g
        torch.mul(a, f, out=out[rows])  # float32 math, rounded once into a 16-bit out
    return out


def _whole_epilogue(h: Tensor, activation: str, half: bool) -> Tensor:
    """``_epilogue`` of one block, on whole tensors: no views per block, no ``out=`` writes, the
    product taken in place in the fresh f(g) (a small call's time is its ops: SwiGLU at 32x16->8
    took ~2.5x the time through the blocked loop). Same bits: a * f is f * a."""
    a, g = (h.float() if half else h).chunk(2, dim=-1)
    if activation == "linear":
        product = a * g
    elif half and activation in _FORWARD_INPLACE:  # g is our float32 copy: nothing else reads it
        product = _FORWARD_INPLACE[activation](g).mul_(a)
    else:
        product = _activate(g, activation).mul_(a)
    return product.to(h.dtype) if half else product


# The same kernels in place, for f(g) over a scratch copy: no fresh f per block (bfloat16 epilogues
# at 2048x1024->1024: SiLU 0.87x, ReLU 0.80-0.85x, GELU 0.93x the time).
_FORWARD_INPLACE = {
    "silu": lambda g: F.silu(g, inplace=True),
    "gelu": lambda g: torch.ops.aten.gelu_(g),
    "gelu_tanh": lambda g: torch.ops.aten.gelu_(g, approximate="tanh"),
    "relu": torch.relu_,
}


def _activate(g: Tensor, activation: str) -> Tensor:
    forward = _FORWARD.get(activation)
    if forward is not None:
        return forward(g)
    return ACTIVATIONS[activation].forward(g, PRIMITIVES)


# The gate gradient written straight into its half of dh (float32 inputs; no autograd); sigmoid
# needs none: aten::glu_backward does the whole pass.
_GATE_GRAD_INTO = {
    "silu": lambda grad, g, f, out: torch.ops.aten.silu_backward.grad_input(
        grad, g, grad_input=out
    ),
    "gelu": lambda grad, g, f, out: torch.ops.aten.gelu_backward.grad_input(
        grad, g, grad_input=out
    ),
    "gelu_tanh": lambda grad, g, f, out: torch.ops.aten.gelu_backward.grad_input(
        grad, g, approximate="tanh", grad_input=out
    ),
    "relu": lambda grad, g, f, out: torch.ops.aten.threshold_backward.grad_input(
        grad, g, 0, grad_input=out
    ),
    "linear": lambda grad, g, f, out: out.copy_(grad),
}


def _grad_preactivation_fast(
    dy: Tensor, h: Tensor, activation: str, bias_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """``(dh, db)`` for a plain backward (no create_graph; not differentiable): ATen's fused
    backward kernels writing into one preallocated (B, 2U) dh, with db summed per block while it is
    in cache (row blocks on the CPU; one block, on whole tensors, for small h and elsewhere).
    16-bit inputs: float32 math, dh rounded once; db summed in float32 from the float32 block,
    except for CUDA's 16-bit GLU, where it sums the rounded dh."""
    half = _is_half(h)
    if half and activation == "sigmoid" and h.is_cuda:
        # CUDA's aten::glu_backward computes 16-bit inputs in float32 and rounds each output once
        # (the CPU kernel rounds twice): one pass instead of widening dy and h to float32. db sums
        # the rounded dh, accumulating in float32.
        dh = torch.ops.aten.glu_backward(dy, h, -1)
        return dh, (dh.sum(0, dtype=torch.float32).to(h.dtype) if bias_grad else None)
    blocks = _row_blocks(h)
    if len(blocks) == 1:  # whole tensors: no views, no preallocated dh (a small call's time is ops)
        if not half:
            dh = _grad_block(dy, h, activation, None)
            return dh, (dh.sum(0) if bias_grad else None)
        block = _grad_block(*_float32_scratch(dy, h), activation, None)
        return block.to(h.dtype), (block.sum(0).to(h.dtype) if bias_grad else None)
    dh = torch.empty_like(h)
    db = h.new_zeros(h.shape[1], dtype=torch.float32 if half else h.dtype) if bias_grad else None
    for rows in blocks:
        if half:
            dyf, hf, out = _float32_scratch(dy[rows], h[rows], empty=(h[rows].shape,))
            block = _grad_block(dyf, hf, activation, out)
            dh[rows] = block
        else:
            block = _grad_block(dy[rows], h[rows], activation, dh[rows])
        if db is not None:
            db += block.sum(0)
    return dh, None if db is None else db.to(h.dtype)


_SCRATCH = threading.local()
# Below this many float32 elements (128 KiB, glibc's default mmap threshold) a fresh tensor comes
# from the heap's reused memory, not from new pages.
_ARENA_MIN_ELEMENTS = 1 << 15


def _float32_scratch(*copies: Tensor, empty: tuple[torch.Size, ...] = ()) -> list[Tensor]:
    """Float32 copies of these 16-bit blocks, then uninitialised float32 buffers of the shapes in
    ``empty``, carved (on the CPU) from one per-thread arena that lives across calls. A fresh ~1 MiB
    temporary per block costs more in page faults than its math: the bfloat16 training step at
    1024x256->256 measured 0.71-0.79x (SiLU) and 0.90-0.95x (GLU) the time with fresh blocks. The
    arena holds the largest request so far: ~2.5 MiB per thread at the default block size.
    Small requests, and those off the CPU, get plain tensors (no pages to fault in; ~5 us less
    a call at 32x16->8)."""
    shapes = [c.shape for c in copies] + list(empty)
    sizes = [math.prod(shape) for shape in shapes]
    like = copies[0]
    if (
        torch.compiler.is_compiling()  # first: the size test on symbolic sizes would guard on them
        or not like.is_cpu
        or type(like) is not Tensor
        or sum(sizes) < _ARENA_MIN_ELEMENTS
    ):
        return [c.float() for c in copies] + [
            torch.empty(shape, dtype=torch.float32, device=like.device) for shape in empty
        ]
    arena = getattr(_SCRATCH, "arena", None)
    if arena is None or arena.numel() < sum(sizes):
        with torch.inference_mode(False):  # else, made under inference_mode, it is read-only
            arena = _SCRATCH.arena = torch.empty(sum(sizes), dtype=torch.float32, device="cpu")
    views, start = [], 0
    for shape, n in zip(shapes, sizes, strict=True):
        views.append(arena[start : start + n].view(shape))
        start += n
    for view, c in zip(views, copies, strict=False):
        view.copy_(c)
    return views


def _grad_block(dy: Tensor, h: Tensor, activation: str, out: Tensor | None) -> Tensor:
    """``[dy * f(g), dy * a * f'(g)]`` of one block, into ``out`` if given (same dtype as h)."""
    if activation == "sigmoid":  # aten::glu_backward: the whole block in one call
        if out is None:
            return torch.ops.aten.glu_backward(dy, h, -1)
        return torch.ops.aten.glu_backward.grad_input(dy, h, -1, grad_input=out)
    units = dy.shape[-1]
    dh = torch.empty_like(h) if out is None else out
    a, g = h[:, :units], h[:, units:]
    da, dg = dh[:, :units], dh[:, units:]
    f = _activate(g, activation) if activation != "linear" else g
    torch.mul(dy, f, out=da)
    dya = torch.mul(dy, a, out=f) if f is not g else dy * a  # f is dead: reuse its buffer
    _GATE_GRAD_INTO[activation](dya, g, None, dg)
    return dh


def _grad_preactivation(dy: Tensor, h: Tensor, activation: str) -> Tensor:
    """``dh = [dy * f(g), dy * a * f'(g)]`` in h's dtype (float32 math for 16-bit inputs), made of
    differentiable ops: the backward under create_graph (double backward)."""
    a, g = h.chunk(2, dim=-1)
    if _is_half(h):
        dy, a, g = dy.float(), a.float(), g.float()
    gate_grad = _GATE_GRAD.get(activation)
    if gate_grad is None:
        da, dg = epilogue_backward(dy, a, g, ACTIVATIONS[activation], PRIMITIVES)
    else:
        f = _activate(g, activation) if activation != "linear" else g
        da, dg = dy * f, gate_grad(dy * a, g, f)
    return torch.cat([da, dg], dim=-1).to(h.dtype)


# oneDNN's AMX bfloat16 GEMM reads a transposed left operand (x.mT: the rows of x are its columns)
# slowly; for large enough D and 2U, copying x^T into contiguous memory first costs less than it
# saves. The weight product alone on the project's CPU (2 threads), copy + GEMM against
# x.mT @ dh: 0.63-0.70x at 2048x1024->1024, 0.63-0.65x at 4096x1024->2048, 0.48x at
# 2048x4096->11008, 0.75-0.79x at 2048x512->1024; but 0.93-0.95x at D = 256, and from 0.81x to
# 1.70x at 2U <= 1024 depending on B and D (float16 and float32: never faster); hence the bounds.
_CONTIGUOUS_XT_MIN_FEATURES = 512
_CONTIGUOUS_XT_MIN_COLUMNS = 2048  # 2U

# x^T is copied this many rows of x at a time: each block's source stays in cache while it is
# scattered into columns (1.0 ms against 1.6 ms for x.mT.contiguous() at 2048x1024 bfloat16).
_TRANSPOSE_ROWS = 64


def _amx() -> bool:
    is_supported = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(is_supported and is_supported())


_HAS_AMX = _amx()


def _contiguous_xt(x: Tensor, dh: Tensor) -> bool:
    """Whether ``_weight_gradient`` copies x^T into contiguous memory first (see above)."""
    return (
        _HAS_AMX
        and x.dtype == torch.bfloat16
        and x.is_cpu
        and x.shape[1] >= _CONTIGUOUS_XT_MIN_FEATURES
        and dh.shape[1] >= _CONTIGUOUS_XT_MIN_COLUMNS
    )


def _transposed_copy(x: Tensor) -> Tensor:
    """``x.mT`` of the 2-D ``x`` in contiguous memory, copied in blocks of rows (see above)."""
    if torch.compiler.is_compiling() or x.mT.is_contiguous():
        return x.mT.contiguous()  # traced, the compiler plans the copy; contiguous, none is made
    xt = x.new_empty(x.shape[1], x.shape[0])
    for r in range(0, x.shape[0], _TRANSPOSE_ROWS):
        xt[:, r : r + _TRANSPOSE_ROWS].copy_(x[r : r + _TRANSPOSE_ROWS].mT)
    return xt


def _weight_gradient(x: Tensor, dh: Tensor) -> Tensor:
    """``x.mT @ dh`` (D, 2U), the weight gradient, with x transposed into contiguous memory first
    where that is faster: bfloat16 on a CPU with AMX, D >= 512 and 2U >= 2048."""
    return _transposed_copy(x) @ dh if _contiguous_xt(x, dh) else x.mT @ dh


def _recordable_forward(x: Tensor, w: Tensor, b: Tensor | None, activation: str) -> Tensor:
    """The op as whole-tensor ATen calls, for recorders of ATen calls (``torch.jit.trace``,
    ``torch.export``, ONNX): no autograd.Function (the TorchScript ONNX exporter took its second
    output, h), no custom op (unknown to ONNX and to a program loaded without glu_kernels) and no
    writes through ``out=`` views (lost in ONNX, which returned the uninitialised buffer). Same bits
    as ``_epilogue``; gradients come from autograd of these calls. ``linear``, not ``addmm``:
    TorchScript's executor rewrites a traced addmm as mm + add, rounding a 16-bit h twice."""
    h = F.linear(x, w.t(), b)  # = addmm(b, x, w); w.t(), not w.mT: ONNX has no aten::mT
    return _recordable_epilogue(h, activation)


def _recordable_epilogue(h: Tensor, activation: str) -> Tensor:
    """``_epilogue`` as whole-tensor ATen calls (see ``_recordable_forward``): the same bits.
    16-bit GLU is not ``F.glu``: its CPU derivatives round twice (backward) or do not exist for 16
    bits (forward mode: "glu_jvp_cpu" not implemented for 'BFloat16'); the float32 formula gives
    F.glu's forward bits and once-rounded gradients."""
    if activation == "sigmoid" and not _is_half(h):
        return F.glu(h, dim=-1)
    a, g = (h.float() if _is_half(h) else h).chunk(2, dim=-1)
    return (a * (_activate(g, activation) if activation != "linear" else g)).to(h.dtype)


def _forward(x: Tensor, w: Tensor, b: Tensor | None, activation: str) -> tuple[Tensor, Tensor]:
    h = _preactivation(x, w, b)
    return _epilogue(h, activation), h


@torch.library.custom_op("glu_kernels::glu", mutates_args=())
def glu_op(
    x: Tensor, w: Tensor, b: Tensor | None, activation: str, save: str
) -> tuple[Tensor, Tensor]:
    """``(out, h)`` for 2-D ``x`` (B, D), ``w`` (D, 2U), ``b`` (2U,) or None."""
    return _forward(x, w, b, activation)


@glu_op.register_fake
def _glu_op_fake(x, w, b, activation, save):
    return x.new_empty(x.shape[0], w.shape[1] // 2), x.new_empty(x.shape[0], w.shape[1])


def _setup_context(ctx, inputs, output):
    x, w, b, activation, save = inputs
    ctx.activation, ctx.save, ctx.has_bias = activation, save, b is not None
    ctx.set_materialize_grads(False)  # h's cotangent is None unless h is used (double backward)
    if save == "activations":
        ctx.save_for_backward(x, w, output[1])
    else:
        ctx.save_for_backward(x, w, b)


_IS_LEGACY_BATCHED = getattr(torch._C._functorch, "is_legacy_batchedtensor", None)


def _is_batched(t: Tensor) -> bool:
    """Whether ``t`` is a batch of cotangents that autograd's vmap hands to the backward."""
    return bool(_IS_LEGACY_BATCHED is not None and _IS_LEGACY_BATCHED(t))


def _backward(ctx, dy: Tensor | None, dh_extra: Tensor | None):
    # Cotangents are not materialized: dh_extra (h's) is None but under double backward, where the
    # first backward's use of h sends one; dy (out's) may then be None.
    x, w, saved = ctx.saved_tensors
    bias_grad, db = ctx.has_bias and ctx.needs_input_grad[2], None
    if dy is None:
        if dh_extra is None:
            return None, None, None, None, None
        dh = dh_extra
    else:
        h = saved if ctx.save == "activations" else _preactivation(x, w, saved)
        if torch.is_grad_enabled() or _is_batched(dy):
            # create_graph (a backward that is itself differentiable), or a batch of cotangents
            # (is_grads_batched, jacobian(vectorize=True)): whole-tensor ops that vmap can batch
            dh = _grad_preactivation(dy, h, ctx.activation)
        else:
            dh, db = _grad_preactivation_fast(dy, h, ctx.activation, bias_grad and dh_extra is None)
        if dh_extra is not None:
            dh = dh + dh_extra
    # dw first: _weight_gradient's copy of x^T is freed before dx is allocated
    dw = _weight_gradient(x, dh) if ctx.needs_input_grad[1] else None
    dx = dh @ w.mT if ctx.needs_input_grad[0] else None
    if bias_grad and db is None:
        db = dh.sum(0)
    return dx, dw, db, None, None


glu_op.register_autograd(_backward, setup_context=_setup_context)


class _GluFunction(torch.autograd.Function):
    """The custom op's forward and backward as a plain autograd.Function, for eager autograd: the
    same functions without the custom op's Python dispatch (measured ~0.4 ms a training step at
    1024x256->256). Old-style (ctx in forward): the new style's functorch support costs ~50 us a
    call; torch.func transforms and compilers get the registered custom op instead (see glu())."""

    @staticmethod
    def forward(ctx, x, w, b, activation, save):
        output = _forward(x, w, b, activation)
        _setup_context(ctx, (x, w, b, activation, save), output)
        return output

    backward = staticmethod(_backward)


def _batched(t: Tensor, batch_dim: int | None) -> Tensor:
    """``t`` of an empty vmap batch with its batch dimension first."""
    return t.expand(0, *t.shape) if batch_dim is None else t.movedim(batch_dim, 0)


@glu_op.register_vmap
def _glu_op_vmap(info, in_dims, x, w, b, activation, save):
    x_dim, w_dim, b_dim = in_dims[:3]
    size = info.batch_size
    if w_dim is None and b_dim is None:
        xs = x.movedim(x_dim, 0)
        out, h = glu_op(xs.flatten(0, 1), w, b, activation, save)
        rows = xs.shape[1]  # not -1: there may be no rows
        return (out.reshape(size, rows, out.shape[-1]), h.reshape(size, rows, h.shape[-1])), (0, 0)
    if size == 0:  # no examples to stack: the batched formula on empty tensors
        h = _batched(x, x_dim) @ _batched(w, w_dim)
        if b is not None:
            h = h + _batched(b, b_dim).unsqueeze(-2)
        return (_recordable_epilogue(h, activation), h), (0, 0)
    outs = [
        glu_op(
            x if x_dim is None else x.select(x_dim, i),
            w if w_dim is None else w.select(w_dim, i),
            b if b_dim is None else b.select(b_dim, i),
            activation,
            save,
        )
        for i in range(size)
    ]
    return (torch.stack([o for o, _ in outs]), torch.stack([h for _, h in outs])), (0, 0)


# Under torch.autocast("cpu") (bfloat16 by default) the op runs in bfloat16, like a matmul would.
torch.library.register_autocast("glu_kernels::glu", "cpu", torch.bfloat16)


def _autocast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    if t is None or not t.is_floating_point() or t.dtype == torch.float64:
        return t
    return t.to(dtype)


def _flatten_leading(x: Tensor, features: int) -> Tensor:
    """``x`` as (rows, D). By -1, not by the product of the leading sizes: ``torch.jit.trace``
    records that product as a constant and ``torch.export(strict=False)`` specialises the sizes in
    it to the example's (programs and ONNX models for one batch size only). -1 is ambiguous when D
    is 0: such calls keep the product, and their recordings one batch size."""
    return x.reshape(-1, features) if features else x.reshape(x.shape[:-1].numel(), 0)


@torch.library.custom_op("glu_kernels::gated", mutates_args=())
def gated_op(h: Tensor, activation: str) -> Tensor:
    """``a * f(g)`` for 2-D ``h = [a | g]`` (B, 2U)."""
    return _epilogue(h, activation)


@gated_op.register_fake
def _gated_op_fake(h, activation):
    return h.new_empty(h.shape[0], h.shape[1] // 2)


def _gated_setup_context(ctx, inputs, output):
    h, activation = inputs
    ctx.activation = activation
    ctx.save_for_backward(h)


def _gated_backward(ctx, dy: Tensor):
    (h,) = ctx.saved_tensors
    if torch.is_grad_enabled() or _is_batched(dy):  # as in _backward
        return _grad_preactivation(dy, h, ctx.activation), None
    return _grad_preactivation_fast(dy, h, ctx.activation, False)[0], None


gated_op.register_autograd(_gated_backward, setup_context=_gated_setup_context)


class _GatedFunction(torch.autograd.Function):
    """The gated custom op's forward and backward for eager autograd (see ``_GluFunction``)."""

    @staticmethod
    def forward(ctx, h, activation):
        out = _epilogue(h, activation)
        _gated_setup_context(ctx, (h, activation), out)
        return out

    backward = staticmethod(_gated_backward)


@gated_op.register_vmap
def _gated_op_vmap(info, in_dims, h, activation):
    hs = h.movedim(in_dims[0], 0)
    out = gated_op(hs.flatten(0, 1), activation)
    return out.reshape(info.batch_size, hs.shape[1], out.shape[-1]), 0


# How a call runs (see glu()): as plain ATen calls that autograd differentiates, through the custom
# op, through the autograd.Function, or as plain kernels without autograd.
_ATEN, _CUSTOM_OP, _FUNCTION, _KERNELS = "aten", "custom op", "function", "kernels"

# Eager float32/float64 training calls whose h has at most this many elements run as the plain
# ATen calls too, differentiated by autograd: the same bits, forward and every gradient of a plain
# backward with contiguous tensors (tested; a transposed cotangent, create_graph and batched
# cotangents run other kernels on the two paths: a few ulp apart, as two GEMMs of other shapes are),
# and a cheaper training step where Python's autograd.Function costs more than the passes it saves:
# 0.82x (GLU) and 0.64x (SwiGLU) the time at 32x16->8, 0.76-0.90x at 128x64->64, 0.88x at
# 256x128->128; 0.96-1.07x at 512x256->256 and above. They keep a few tensors of h's size more
# (at most a few hundred KiB). 16-bit calls keep the Function (autograd of F.glu rounds twice on
# the CPU), as does save="input" (its promise is memory).
_ATEN_TRAINING_MAX_ELEMENTS = 1 << 16


def _trains_as_aten(path: str, rows: int, columns: int, t: Tensor, save: str) -> bool:
    """Whether a Function call (``path``) with an h of (rows, columns) and t's dtype runs as the
    plain ATen calls instead (see above). Sizes are multiplied last: traced sizes never are."""
    return (
        path == _FUNCTION
        and t.dtype in (torch.float32, torch.float64)
        and save == "activations"
        and rows * columns <= _ATEN_TRAINING_MAX_ELEMENTS
    )


def _path(needs_grad: bool) -> str:
    functorch = torch._C._are_functorch_transforms_active()
    if (
        torch.jit.is_tracing()
        or _is_exporting()
        or _forward_ad._current_level >= 0  # a torch.autograd.forward_ad.dual_level
        or (functorch and _functorch_differentiates())
    ):
        # plain ATen calls: what records portably, and what forward-mode AD and torch.func's
        # differentiating transforms differentiate (autograd's formulas, not the lean backward)
        return _ATEN
    if functorch or (needs_grad and torch.compiler.is_compiling()):
        return _CUSTOM_OP  # the op's fake, vmap and autograd rules
    return _FUNCTION if needs_grad else _KERNELS


def gated(h: Tensor, spec: GatedSpec) -> Tensor:
    packed = 2 * spec.units
    # contiguous: every path then computes the same bits and returns a contiguous result, as the
    # custom op's fake kernel says (a transposed h is the caller's rare case; it costs one copy)
    h2 = (h if h.dim() == 2 else _flatten_leading(h, packed)).contiguous()
    name = spec.activation.name
    path = _path(torch.is_grad_enabled() and h.requires_grad)
    if _trains_as_aten(path, h2.shape[0], packed, h2, "activations"):
        path = _ATEN
    if path == _KERNELS:
        out = _epilogue(h2, name)
    elif path == _FUNCTION:
        out = _GatedFunction.apply(h2, name)
    elif path == _CUSTOM_OP:
        out = gated_op(h2, name)
    else:
        out = _recordable_epilogue(h2, name)
    return out if h.dim() == 2 else out.reshape(*h.shape[:-1], spec.units)


def glu(x: Tensor, w: Tensor, b: Tensor | None, spec: GluSpec) -> Tensor:
    autocast = _autocast_dtype(x)
    if autocast is not None:
        # Cast to the autocast dtype (validation saw these dtypes already) and run without autocast,
        # so both paths behave alike and the op's bfloat16 rule never recasts a float16 autocast.
        x, w, b = _autocast(x, autocast), _autocast(w, autocast), _autocast(b, autocast)
        with torch.autocast(x.device.type, enabled=False):
            return glu(x, w, b, spec)
    # Reshape only what is not 2-D already: at small sizes each reshape costs a fifth of the GEMM.
    x2 = x if x.dim() == 2 else _flatten_leading(x, spec.features)
    w2 = w if spec.weight_rank == 2 else w.reshape(spec.features, 2 * spec.units)
    b2 = b if b is None or b.dim() == 1 else b.reshape(2 * spec.units)
    name = spec.activation.name
    path = _path(
        torch.is_grad_enabled()
        and (x.requires_grad or w.requires_grad or (b is not None and b.requires_grad))
    )
    if _trains_as_aten(path, x2.shape[0], 2 * spec.units, x2, spec.save):
        # addmm, not _recordable_forward's linear: one autograd node less (no transpose)
        out = _recordable_epilogue(_preactivation(x2, w2, b2), name)
    elif path == _KERNELS:
        out = _epilogue(_preactivation(x2, w2, b2), name)
    elif path == _FUNCTION:
        out = _GluFunction.apply(x2, w2, b2, name, spec.save)[0]
    elif path == _CUSTOM_OP:
        out = glu_op(x2, w2, b2, name, spec.save)[0]
    else:
        out = _recordable_forward(x2, w2, b2, name)
    return out if x.dim() == 2 else out.reshape(*x.shape[:-1], spec.units)


def _epilogue_words(activation: str) -> str:
    if activation == "sigmoid":
        return "F.glu (one fused pass)"
    if activation == "linear":
        return "one multiply, a * g"
    return f"ATen's {activation} kernel and an in-place multiply"


def implementation(spec: GluSpec) -> str:
    return (
        f"torch.addmm on the packed (D, 2U) weight, then {_epilogue_words(spec.activation.name)}; "
        "when a gradient is needed, an autograd.Function with the recompute backward "
        "(the custom op glu_kernels::glu under torch.compile and torch.func.vmap), except for "
        f"float32/float64 calls with h of at most {_ATEN_TRAINING_MAX_ELEMENTS} elements and "
        "save='activations': plain ATen calls, autograd's gradient (cheaper there); "
        "recorded by torch.jit.trace or torch.export, or under forward-mode AD and torch.func's "
        "grad/jvp transforms: plain ATen calls, autograd's gradient"
    )


def gated_implementation(spec: GatedSpec) -> str:
    return (
        f"{_epilogue_words(spec.activation.name)} on h made contiguous; when a gradient is "
        "needed, an autograd.Function with the recompute backward (the custom op "
        "glu_kernels::gated under torch.compile and torch.func.vmap), except for float32/float64 "
        f"h of at most {_ATEN_TRAINING_MAX_ELEMENTS} elements: plain ATen calls, autograd's "
        "gradient (cheaper there); recorded by torch.jit.trace or torch.export, or under "
        "forward-mode AD and torch.func's grad/jvp transforms: plain ATen calls, autograd's "
        "gradient"
    )
