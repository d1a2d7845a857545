"""PyTorch: the recorders of ATen calls: ``torch.jit.trace``, ``torch.export`` and ONNX.

While one of them records, glu runs as whole-tensor ATen calls (the backend's
``_recordable_forward``), so what they record is portable: no ``glu_kernels::glu`` custom op (ONNX
has no translation for it, and an exported program holding it needs glu_kernels to load), no
``autograd.Function`` (the TorchScript ONNX exporter recorded its second output, h, as the result)
and no writes through ``out=`` views (lost in ONNX: the model returned an uninitialised buffer).
Leading sizes stay symbolic: a program recorded at one batch size runs at another.

Checked, in float32, bfloat16 and float16, with parameters that do or do not require grad (eager
glu takes different paths for the two): a traced module and an exported program at other leading
sizes give eager glu's bits (the same ATen kernels); a traced module's gradients against the
float64 reference; an exported program holds only ATen ops, and loads and runs in a process that
never imports glu_kernels; ONNX models from both exporters, run by onnxruntime in float32 (its own
kernels: compared with the float64 reference at float32's tolerance).
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from tolerances import assert_close, gradient_scales, output_scale

torch = pytest.importorskip("torch")

import glu_kernels as gk  # noqa: E402
from glu_kernels.reference import glu_reference, glu_reference_vjp  # noqa: E402

pytestmark = [
    # torch.jit.trace is deprecated in favour of torch.export, and says so on every call
    pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning"),
    # strict export runs Dynamo, which traces through glu's validation cache and says so
    pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools:UserWarning"),
    # a Python number made from a traced size is baked into the recording: none may be
    pytest.mark.filterwarnings("error:Converting a tensor to a Python:torch.jit.TracerWarning"),
]

ACTIVATIONS = ("sigmoid", "silu", "gelu", "gelu_tanh", "relu", "linear")
D, U = 16, 8


class _Glu(torch.nn.Module):
    """A (D, 2, U) kernel and (2, U) bias as parameters, like the Keras layer's."""

    def __init__(self, activation: str, dtype=torch.float32, requires_grad: bool = True):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.activation = activation
        self.w = torch.nn.Parameter(
            (torch.randn(D, 2, U, generator=g) / D**0.5).to(dtype), requires_grad=requires_grad
        )
        self.b = torch.nn.Parameter(
            (torch.randn(2, U, generator=g) * 0.1).to(dtype), requires_grad=requires_grad
        )

    def forward(self, x):
        return gk.glu(x, self.w, self.b, activation=self.activation)


def _x(*lead, dtype=torch.float32, seed=1):
    return torch.randn(*lead, D, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _aten_only(graph) -> list[str]:
    """The targets of ``graph``'s calls that are not ATen (or Python's operator) functions."""
    return [
        str(n.target)
        for n in graph.nodes
        if n.op == "call_function" and not str(n.target).startswith(("aten.", "<built-in function"))
    ]


# --------------------------------------------------------------------------------------------------
# torch.jit.trace


DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["float32", "bfloat16", "float16"]
GRAD = pytest.mark.parametrize("requires_grad", [True, False], ids=["params_grad", "params_frozen"])


@GRAD
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_torch_jit_trace_matches_eager_at_other_sizes(activation, dtype, requires_grad):
    """Bit for bit: the recording is eager glu's kernels, and TorchScript's optimizing executor
    leaves them alone (it rewrites a traced addmm as mm + add, which is why glu records linear;
    several replays, as the executor optimizes after the first)."""
    module = _Glu(activation, dtype, requires_grad)
    traced = torch.jit.trace(module, (_x(4, 3, dtype=dtype),))  # check_trace: a replay, bitwise
    for lead in [(4, 3), (6, 5), (1, 1), (6, 5)]:  # a trace is for one rank of x
        x = _x(*lead, dtype=dtype, seed=sum(lead))
        got = traced(x)
        assert got.shape == (*lead, U) and got.dtype == dtype
        torch.testing.assert_close(got, module(x), rtol=0, atol=0, msg=f"{lead}: {activation}")


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_torch_jit_traced_module_gradients_match_reference(activation):
    module = _Glu(activation)
    traced = torch.jit.trace(module, (_x(4, 3),))
    x = _x(6, 5).requires_grad_()
    out = traced(x)
    dy = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    grads = torch.autograd.grad(out, (x, module.w, module.b), dy)
    args = [t.detach().numpy() for t in (x, module.w, module.b)]
    refs = glu_reference_vjp(*args, dy.numpy(), activation)
    scales = gradient_scales(*args, dy.numpy(), activation, "float32")
    for name, got, ref, scale in zip(("dx", "dw", "db"), grads, refs, scales, strict=True):
        assert_close(got.numpy(), ref, scale, "float32", what=f"traced {name} ({activation})")


# --------------------------------------------------------------------------------------------------
# torch.export


def _export(module, x, strict: bool):
    dims = {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("seq", min=1)}
    return torch.export.export(module, (x,), dynamic_shapes={"x": dims}, strict=strict)


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "non_strict"])
@GRAD
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_torch_export_holds_aten_ops_and_keeps_leading_sizes_symbolic(
    activation, dtype, requires_grad, strict
):
    module = _Glu(activation, dtype, requires_grad)
    program = _export(module, _x(4, 3, dtype=dtype), strict)
    assert _aten_only(program.graph) == [], "an exported glu must be plain ATen ops"
    run = program.module()
    for lead in [(4, 3), (6, 5), (1, 9)]:
        x = _x(*lead, dtype=dtype, seed=sum(lead))
        torch.testing.assert_close(run(x), module(x), rtol=0, atol=0, msg=f"{lead}: {activation}")


def test_torch_exported_program_runs_without_glu_kernels(tmp_path):
    module = _Glu("silu", dtype=torch.bfloat16)
    path = tmp_path / "glu.pt2"
    torch.export.save(_export(module, _x(4, 3, dtype=torch.bfloat16), strict=False), path)
    x = _x(6, 5, dtype=torch.bfloat16)
    torch.save(x, tmp_path / "x.pt")
    script = (
        "import sys, torch\n"
        f"program = torch.export.load({str(path)!r})\n"
        f"out = program.module()(torch.load({str(tmp_path / 'x.pt')!r}))\n"
        "assert 'glu_kernels' not in sys.modules, 'loading imported glu_kernels'\n"
        f"torch.save(out, {str(tmp_path / 'out.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    out = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(out, module(x), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# ONNX, run by onnxruntime


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript_exporter", "dynamo_exporter"])
@GRAD
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_torch_onnx_export_runs_in_onnxruntime(activation, requires_grad, dynamo, tmp_path):
    """float32: onnxruntime's CPU provider has no bfloat16 Gemm."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")  # the dynamo exporter's dependency
    module = _Glu(activation, requires_grad=requires_grad).eval()
    path = str(tmp_path / "glu.onnx")
    with warnings.catch_warnings():
        # the exporters' deprecation notices; the module's TracerWarning filter still applies
        warnings.simplefilter("ignore", DeprecationWarning)
        if dynamo:
            dims = {"x": {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("seq", min=1)}}
            torch.onnx.export(
                module, (_x(4, 3),), path, input_names=["x"], dynamo=True, dynamic_shapes=dims
            )
        else:
            axes = {"x": {0: "batch", 1: "seq"}}
            torch.onnx.export(
                module, (_x(4, 3),), path, input_names=["x"], dynamo=False, dynamic_axes=axes
            )
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    w, b = module.w.detach().numpy(), module.b.detach().numpy()
    for lead in [(4, 3), (6, 5)]:
        x = _x(*lead, seed=sum(lead)).numpy()
        (got,) = session.run(None, {"x": x})
        assert got.shape == (*lead, U)
        assert_close(
            got,
            glu_reference(x, w, b, activation),
            output_scale(x, w, b, activation),
            "float32",
            what=f"onnxruntime {activation} at {lead}",
        )
    assert np.isfinite(got).all()
