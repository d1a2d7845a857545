"""JAX backend: a jitted ``jax.custom_vjp`` that contracts x with the (D, 2, U) weight.

The weight is used as (D, 2, U) (a (D, 2U) weight is reshaped, which is free), and contracted with
``einsum`` over D only, so a weight sharded over U stays local to each device: the forward needs no
collective. XLA fuses the epilogue and the backward elementwise pass into the GEMMs' neighbours.
"""

from __future__ import annotations

from functools import cache, partial

import jax
import jax.numpy as jnp
from jax.experimental.layout import Layout, with_layout_constraint
from jax.sharding import PartitionSpec as P

from glu_kernels._activations import ACTIVATIONS, epilogue_backward
from glu_kernels._validate import GatedSpec, GluSpec, numpy_dtype_name

NAME = "jax"
DIFFERENTIABLE = True
ROUNDS_MATMUL_BEFORE_BIAS = False


def shape(t: jax.Array) -> tuple[int, ...]:
    return tuple(t.shape)


def dtype_name(t: jax.Array) -> str:
    return numpy_dtype_name(t.dtype)


stored_dtype_name = dtype_name  # no autocast here: what dtype_name says


class _Primitives:
    sigmoid = staticmethod(jax.nn.sigmoid)
    tanh = staticmethod(jnp.tanh)
    erfc = staticmethod(jax.scipy.special.erfc)
    exp = staticmethod(jnp.exp)
    relu = staticmethod(jax.nn.relu)

    @staticmethod
    def positive(g: jax.Array) -> jax.Array:
        return (g > 0).astype(g.dtype)


PRIMITIVES = _Primitives()

_FORWARD = {
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "gelu": partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}


def _preactivation(x, w3, b3, compute_dtype):
    """``h = x @ w3 + b3``, shape (..., 2, U).

    Accumulated in compute_dtype, rounded once to x's dtype.
    """
    h = jnp.einsum("...d,dku->...ku", x, w3, preferred_element_type=compute_dtype)
    if b3 is not None:  # broadcast explicitly: no rank promotion (jax_numpy_rank_promotion)
        h = h + jax.lax.broadcast_to_rank(b3.astype(compute_dtype), h.ndim)
    return h.astype(x.dtype)


def _like(primal) -> dict:
    """``out_sharding=`` the primal's sharding under explicit sharding (``AxisType.Explicit``, the
    default of ``jax.make_mesh`` in recent JAX), where a contraction over a sharded axis (U for dx,
    the batch for dw) must name its output sharding; nothing otherwise (XLA propagates them)."""
    typeof = getattr(jax, "typeof", None)
    sharding = getattr(typeof(primal), "sharding", None) if typeof is not None else None
    mesh = getattr(sharding, "mesh", None)
    explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
    if explicit is not None and explicit in getattr(mesh, "axis_types", ()):
        return {"out_sharding": sharding}
    return {}


def _gathered_last_axis(a):
    """``a`` with its last axis unsharded, where explicit sharding (see ``_like``) splits it over
    devices: the packed 2U axis is about to become (2, U), and a reshape cannot split one mesh axis
    over the two halves (JAX refuses to slice them). The gather XLA makes by itself under automatic
    sharding; the (D, 2, U) layout needs none (README, "Scaling out")."""
    sharding = _like(a).get("out_sharding")
    spec = tuple(getattr(sharding, "spec", ()))
    if len(spec) < a.ndim or spec[a.ndim - 1] is None:
        return a
    unsharded = jax.sharding.NamedSharding(sharding.mesh, P(*spec[: a.ndim - 1], None))
    return jax.sharding.reshard(a, unsharded)


def _varying_axes(v) -> frozenset:
    """The manual mesh axes ``v`` varies along inside ``shard_map`` (empty outside it)."""
    typeof = getattr(jax, "typeof", None)
    if typeof is None:
        return frozenset()
    aval = typeof(v)
    vma = getattr(aval, "vma", None)
    if vma is None:
        vma = getattr(getattr(aval, "manual_axis_type", None), "varying", None)
    return frozenset(vma or ())


def _summed_like(cotangent, primal):
    """The cotangent summed over the ``shard_map`` axes along which it varies but its primal does
    not (dw of a weight replicated over a batch-sharded axis), as JAX's own transpose rules do; a
    custom VJP must return cotangents typed like its primals."""
    extra = tuple(sorted(_varying_axes(cotangent) - _varying_axes(primal)))
    return jax.lax.psum(cotangent, extra) if extra else cotangent


def _epilogue(h, activation: str, compute_dtype: str):
    """``a * f(g)`` for h (..., 2, U), computed in compute_dtype, rounded once to h's dtype."""
    act = ACTIVATIONS[activation]
    forward = _FORWARD.get(activation) or partial(act.forward, p=PRIMITIVES)
    a, g = h[..., 0, :].astype(compute_dtype), h[..., 1, :].astype(compute_dtype)
    return (a * forward(g)).astype(h.dtype)


def _grad_preactivation(dy, h, activation: str, compute_dtype: str):
    """``dh = [dy * f(g), dy * a * f'(g)]`` for h (..., 2, U), shape (..., 2, U), computed in
    compute_dtype, rounded once to h's dtype."""
    a, g = h[..., 0, :].astype(compute_dtype), h[..., 1, :].astype(compute_dtype)
    da, dg = epilogue_backward(dy.astype(compute_dtype), a, g, ACTIVATIONS[activation], PRIMITIVES)
    return jnp.stack([da, dg], axis=-2).astype(h.dtype)


def _weight_grad_of_row_major_xt(x, dh, compute_dtype: str, like: dict):
    """``x^T @ dh`` over all leading axes, (D, 2, U), with x^T materialised row-major first.
    The layout constraint is a custom call that ``jax.export`` serializes only when allowed by name
    (README, the jax.export row)."""
    xt = with_layout_constraint(jnp.moveaxis(x, -1, 0), Layout(major_to_minor=tuple(range(x.ndim))))
    lead = tuple(range(dh.ndim - 2))
    return jax.lax.dot_general(
        xt,
        dh,
        ((tuple(i + 1 for i in lead), lead), ((), ())),
        preferred_element_type=compute_dtype,
        **like,
    )


@cache
def _glu_fn(activation: str, save: str, dtype: str, compute_dtype: str, has_bias: bool):
    """The jitted custom-VJP glu for one (activation, save, dtype, bias or not)."""

    def epilogue(h):
        return _epilogue(h, activation, compute_dtype)

    @jax.custom_vjp
    def glu3(x, w3, b3):
        return epilogue(_preactivation(x, w3, b3, compute_dtype))

    def glu3_fwd(x, w3, b3):
        h = _preactivation(x, w3, b3, compute_dtype)
        return epilogue(h), (x, w3, b3, h if save == "activations" else None)

    def glu3_bwd(residuals, dy):
        x, w3, b3, saved = residuals
        h = saved if save == "activations" else _preactivation(x, w3, b3, compute_dtype)
        # The barrier keeps XLA:CPU from fusing this elementwise pass into each of its consumers
        # (bfloat16 training step with it: 0.93-0.96x the time without).
        dh = jax.lax.optimization_barrier(_grad_preactivation(dy, h, activation, compute_dtype))
        dx = jnp.einsum("...ku,dku->...d", dh, w3, preferred_element_type=compute_dtype, **_like(x))

        def weight_grad(x, dh):
            return jnp.einsum(
                "...d,...ku->dku", x, dh, preferred_element_type=compute_dtype, **_like(w3)
            )

        if dtype == "bfloat16":
            # XLA:CPU (jax 0.10) rejects this contraction for BF16 x BF16 = F32 at run time for
            # some shapes (2-D x: "Unsupported element type for DotThunk::Execute"), and runs it
            # slowly where it takes it (x^T read through a transposed layout). On the CPU x^T is
            # first made a row-major array (with_layout_constraint: a plain transpose would stay a
            # layout change), then multiplied as a plain bfloat16 GEMM accumulating in float32:
            # the product alone 0.27x the time of the float32-operand form at 2048x1024->1024,
            # 0.30x at 1024x256->256 (one A/B); elsewhere it stays as it is (tensor cores).
            dw = jax.lax.platform_dependent(
                x,
                dh,
                cpu=lambda x, dh: _weight_grad_of_row_major_xt(x, dh, compute_dtype, _like(w3)),
                default=weight_grad,
            )
        else:
            dw = weight_grad(x, dh)
        db = None
        if has_bias:
            # db as a contraction with ones, like dx and dw: a reduction would read dh in another
            # shape, (B, 2, U) instead of the GEMMs' (B, 2U), and XLA:CPU would then compute the
            # elementwise pass twice, keeping both copies (float32 training step at
            # 2048x1024->1024: 56 -> 32 MiB of XLA scratch; 0.92-0.98x the time there and at
            # 4096x1024->2048, float32 and bfloat16). Over all leading axes at once (no reshape:
            # a batch sharded on a later axis stays as it is), at full precision, as a sum is (no
            # TF32 or bf16 passes on an accelerator).
            lead = tuple(range(dh.ndim - 2))
            db = jax.lax.dot_general(
                jnp.ones(dh.shape[:-2], dh.dtype),
                dh,
                ((lead, lead), ((), ())),
                precision=jax.lax.Precision.HIGHEST,
                preferred_element_type=compute_dtype,
                **_like(b3),  # a replicated bias of U-sharded weights: db replicated too
            )
        return (
            _summed_like(dx, x).astype(dtype),
            _summed_like(dw, w3).astype(dtype),
            None if db is None else _summed_like(db, b3).astype(dtype),
        )

    glu3.defvjp(glu3_fwd, glu3_bwd)

    def glu_packed(x, w, b):
        # w (D, 2U) or (D, 2, U), b (2U,) or (2, U): reshaped inside the jit, where it is free (an
        # eager reshape is one more dispatch and a copy of the weight on every call)
        d, u = w.shape[0], w.shape[-1] // (2 if w.ndim == 2 else 1)
        if w.ndim == 2:
            w = _gathered_last_axis(w)
        if b is not None and b.ndim == 1:
            b = _gathered_last_axis(b)
        return glu3(x, w.reshape(d, 2, u), None if b is None else b.reshape(2, u))

    return jax.jit(glu_packed)


@cache
def _gated_fn(activation: str, compute_dtype: str):
    """The jitted custom-VJP gated for one activation and compute dtype."""

    def halves(h):  # (..., 2U) -> (..., 2, U): free inside the jit
        h = _gathered_last_axis(h)
        return h.reshape(*h.shape[:-1], 2, h.shape[-1] // 2)

    @jax.custom_vjp
    def gated(h):
        return _epilogue(halves(h), activation, compute_dtype)

    def gated_fwd(h):  # the epilogue itself, not gated: forward mode over it (jax.hessian) works
        return _epilogue(halves(h), activation, compute_dtype), h

    def gated_bwd(h, dy):
        dh = _grad_preactivation(dy, halves(h), activation, compute_dtype).reshape(h.shape)
        like = _like(h)  # explicit sharding: dh typed as h is (halves() may have gathered it)
        return (jax.sharding.reshard(dh, like["out_sharding"]) if like else dh,)

    gated.defvjp(gated_fwd, gated_bwd)
    return jax.jit(gated)


def gated(h: jax.Array, spec: GatedSpec) -> jax.Array:
    return _gated_fn(spec.activation.name, spec.compute_dtype)(h)


def glu(x: jax.Array, w: jax.Array, b: jax.Array | None, spec: GluSpec) -> jax.Array:
    fn = _glu_fn(spec.activation.name, spec.save, spec.dtype, spec.compute_dtype, spec.has_bias)
    return fn(x, w, b)


def implementation(spec: GluSpec) -> str:
    return (
        "jax.jit of a jax.custom_vjp: einsum '...d,dku->...ku' on the (D, 2, U) weight (no reshape "
        "of the U axis, so U-sharded weights need no collective), epilogue and backward pass fused "
        "by XLA"
    )


def gated_implementation(spec: GatedSpec) -> str:
    return (
        "jax.jit of a jax.custom_vjp: the epilogue and its backward pass fused by XLA (inlined "
        "into an enclosing jit)"
    )
