"""JAX variants: fused glu, unfused formula (eager, op by op), x@W2 + jax.nn.glu (eager), jax.jit of
the unfused formula, and the jitted GEMM floors. Every call ends in block_until_ready."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.layout import Layout, with_layout_constraint

import glu_kernels
from benchmarks.cases import Shape, gpu_index, memory_cases
from benchmarks.timing import fastest
from benchmarks.variants import COMPILED, FLOOR, FUSED, PACKED, UNFUSED, Variant

_ACT = {
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": lambda g: jax.nn.gelu(g, approximate=False),
    "gelu_tanh": lambda g: jax.nn.gelu(g, approximate=True),
    "linear": lambda g: g,
}


def tensors(shape: Shape, dtype: str, seed: int = 0, device: str = "cpu") -> dict:
    """The same set of tensors as torch_cases, on ``device`` ("cpu", or "cuda[:N]": JAX's GPU N)."""
    rng = np.random.default_rng(seed)
    b_, d, u = shape.batch, shape.features, shape.units
    dt = jnp.dtype(dtype)
    place = jax.devices("gpu")[gpu_index(device)] if device != "cpu" else jax.devices("cpu")[0]

    def r(*s, scale=1.0):
        data = (rng.standard_normal(s) * scale).astype(np.float32)
        return jax.device_put(data, place).astype(dt)

    w2, b2 = r(d, 2 * u, scale=d**-0.5), r(2 * u, scale=0.1)
    return {
        "x": r(b_, d),
        "w2": w2,
        "b2": b2,
        "w": w2[:, :u],
        "v": w2[:, u:],
        "bw": b2[:u],
        "bv": b2[u:],
        "dy": r(b_, u),
        "dh": r(b_, 2 * u),
    }


def _mm(a, b):
    """``a @ b`` accumulated in float32 and rounded once: on XLA:CPU a bfloat16 ``a @ b`` is ~3x
    slower than this (measured at 2048x1024x2048), so every variant, floors included, uses it."""
    if a.dtype == jnp.float64:
        return a @ b
    return jnp.matmul(a, b, preferred_element_type=jnp.float32).astype(a.dtype)


def _row_major(a):
    """``a`` laid out row-major in memory (a transpose otherwise stays a layout change)."""
    return with_layout_constraint(a, Layout(major_to_minor=tuple(range(a.ndim))))


def _mm_nt(a, b):
    """``a @ b.T`` as one dot_general (on XLA:CPU in bfloat16, ~4x faster than ``a @ b.T``)."""
    dims = (((a.ndim - 1,), (b.ndim - 1,)), ((), ()))
    if a.dtype == jnp.float64:
        return jax.lax.dot_general(a, b, dims)
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32).astype(a.dtype)


def unfused(x, w, v, bw, bv, activation="sigmoid"):
    return (_mm(x, w) + bw) * _ACT[activation](_mm(x, v) + bv)


def packed(x, w2, b2, activation="sigmoid"):
    h = _mm(x, w2) + b2
    if activation == "sigmoid":
        return jax.nn.glu(h, axis=-1)
    a, g = jnp.split(h, 2, axis=-1)
    return a * _ACT[activation](g)


def _block(tree):
    return jax.block_until_ready(tree)


def _vjp(fn, args, dy):
    out, vjp = jax.vjp(fn, *args)
    return vjp(dy)


def _mm_wide(a, b):
    """``a @ b`` left in its float32 accumulator (16-bit inputs): the GEMM without the pass that
    rounds its output, a form of the floor."""
    if a.dtype == jnp.float64:
        return a @ b
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)


def _floors(x, w2, b2, w, v, bw, bv, dh):
    """``(forward name, forward, train name, train)``: the floors as the fastest form of their
    products, timed here. Forward: with or without the bias, one GEMM or two of half width, the
    output rounded to x's dtype or left in float32. Training: x^T @ dh read through a transposed
    layout or from a row-major x^T (XLA:CPU reads a transposed bfloat16 operand ~3x slower; glu's
    backward makes the copy, see the JAX backend), in one jit or as three (in one program XLA:CPU
    ran the three bfloat16 GEMMs 1.2x slower than one after another)."""

    def timed(f, *args):
        return lambda: _block(f(*args))

    forward_forms = {
        "x@W2+b": lambda x_, w_, b_: _mm(x_, w_) + b_,
        "x@W2": lambda x_, w_, b_: _mm(x_, w_),
        "x@W2, float32 out": lambda x_, w_, b_: _mm_wide(x_, w_),
    }
    forward = {f"jit({k})": timed(jax.jit(f), x, w2, b2) for k, f in forward_forms.items()}
    half = jax.jit(lambda x_, w_, v_, bw_, bv_: (_mm(x_, w_) + bw_, _mm(x_, v_) + bv_))
    forward["jit(x@W+bw, x@V+bv)"] = timed(half, x, w, v, bw, bv)
    forward_name, floor_fwd = fastest(forward)

    def row_major_product(x_, dh_):
        return _mm(_row_major(x_.T), dh_)

    products = {"x^T@dh": lambda x_, dh_: _mm(x_.T, dh_), "row-major x^T@dh": row_major_product}
    train = {
        f"jit(x@W2, dh@W2^T, {k})": timed(
            jax.jit(lambda x_, w_, dh_, p=p: (_mm(x_, w_), _mm_nt(dh_, w_), p(x_, dh_))), x, w2, dh
        )
        for k, p in products.items()
    }
    separate = [jax.jit(lambda x_, w_: _mm(x_, w_)), jax.jit(_mm_nt), jax.jit(row_major_product)]
    train["jit(x@W2), jit(dh@W2^T), jit(row-major x^T@dh)"] = lambda: _block(
        (separate[0](x, w2), separate[1](dh, w2), separate[2](x, dh))
    )
    train_name, floor_train = fastest(train)
    return forward_name, floor_fwd, train_name, floor_train


def variants(
    shape: Shape, dtype: str, activation: str, compile_: bool = True, device: str = "cpu"
) -> list[Variant]:
    t = tensors(shape, dtype, device=device)
    x, w2, b2, w, v, bw, bv, dy, dh = (
        t[k] for k in ("x", "w2", "b2", "w", "v", "bw", "bv", "dy", "dh")
    )

    def fused(x_, w_, b_):
        return glu_kernels.glu(x_, w_, b_, activation=activation)

    def unf(*a):
        return unfused(*a, activation)

    def pk(*a):
        return packed(*a, activation)

    fused_train = jax.jit(lambda x_, w_, b_, dy_: _vjp(fused, (x_, w_, b_), dy_))
    unf_jit = jax.jit(unf)
    unf_train_jit = jax.jit(
        lambda x_, w_, v_, bw_, bv_, dy_: _vjp(unf, (x_, w_, v_, bw_, bv_), dy_)
    )
    # Jitted like glu itself: a JAX user writes the one-GEMM form under jit
    pk_jit = jax.jit(pk)
    pk_train_jit = jax.jit(lambda x_, w_, b_, dy_: _vjp(pk, (x_, w_, b_), dy_))
    forward_name, floor_fwd, train_name, floor_train = _floors(x, w2, b2, w, v, bw, bv, dh)
    split = (x, w, v, bw, bv)
    out = [
        Variant(
            FUSED,
            "glu_kernels.glu (jit inside); train: jit(vjp)",
            lambda: _block(fused(x, w2, b2)),
            lambda: _block(fused_train(x, w2, b2, dy)),
        ),
        Variant(
            UNFUSED,
            "x@W+b, x@V+b, act, mul, eager; jax.vjp eager",
            lambda: _block(unf(*split)),
            lambda: _block(_vjp(unf, split, dy)),
        ),
        Variant(
            PACKED,
            (
                "jit(x@W2+b, jax.nn.glu); train: jit(vjp)"
                if activation == "sigmoid"
                else "jit(x@W2+b, split, act, mul); train: jit(vjp)"
            ),
            lambda: _block(pk_jit(x, w2, b2)),
            lambda: _block(pk_train_jit(x, w2, b2, dy)),
        ),
    ]
    if compile_:
        out.append(
            Variant(
                COMPILED,
                "jax.jit(unfused); train: jit(vjp(unfused))",
                lambda: _block(unf_jit(*split)),
                lambda: _block(unf_train_jit(*split, dy)),
            )
        )
    out.append(Variant(FLOOR, f"{forward_name}; train: {train_name}", floor_fwd, floor_train))
    return out


def _same(leaf, arg) -> bool:
    """Whether a residual is an input (the same array, or a reshape of it, e.g. w as (D, 2, U))."""
    if leaf is arg:
        return True
    if leaf.size != arg.size or leaf.dtype != arg.dtype:
        return False
    return bool(np.array_equal(np.asarray(leaf).ravel(), np.asarray(arg).ravel()))


def saved_bytes(shape: Shape, dtype: str, activation: str) -> dict:
    """Bytes of the vjp residuals (leaves of the vjp closure), x/w/b counted apart, and XLA's temp
    buffer size of the jitted train step (peak scratch beyond arguments and outputs)."""
    t = tensors(shape, dtype)
    cases = memory_cases(glu_kernels.glu, unfused, packed, activation) | {
        "compiled": (jax.jit(lambda *a: unfused(*a, activation)), ("x", "w", "v", "bw", "bv")),
    }
    bu = shape.batch * shape.units
    res = {}
    for name, (fn, keys) in cases.items():
        args = [t[k] for k in keys]
        _, vjp = jax.vjp(fn, *args)
        leaves = [l_ for l_ in jax.tree_util.tree_leaves(vjp) if hasattr(l_, "nbytes")]
        uniq = {id(l_): l_ for l_ in leaves}.values()
        others = [l_ for l_ in uniq if not any(_same(l_, a) for a in args)]
        total = sum(int(l_.nbytes) for l_ in uniq)
        step = jax.jit(lambda *a, fn=fn: _vjp(fn, a[:-1], a[-1]))
        try:
            mem = step.lower(*args, t["dy"]).compile().memory_analysis()
            temp = int(mem.temp_size_in_bytes) if mem is not None else None
        except Exception:  # noqa: BLE001 - memory analysis is optional per jaxlib
            temp = None
        res[name] = {
            "total_bytes": total,
            "activation_bytes": sum(int(l_.nbytes) for l_ in others),
            "largest_saved_non_input_elems": max((int(l_.size) for l_ in others), default=0),
            "B*U": bu,
            "train_step_temp_bytes": temp,
            "peak_step_bytes": temp,  # XLA's scratch for the jitted step: its peak beyond args/outs
        }
    return res
