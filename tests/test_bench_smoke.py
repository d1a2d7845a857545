"""The benchmark as a smoke test: ``python -m benchmarks --quick`` runs every backend and writes the
JSON, the plot and a README section. Timings are not asserted (a shared CI machine is too noisy);
that every variant ran, and the report's structure, are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "latest.json").read_text())
    return {"dir": out, "stdout": proc.stdout, "result": result}


def test_every_backend_and_variant_was_timed(quick_run):
    from glu_kernels import available_backends

    timings = quick_run["result"]["timings"]
    for backend in available_backends():
        variants = {t["variant"] for t in timings if t["backend"] == backend}
        assert {"fused", "floor"} <= variants, (backend, variants)
        if backend != "numpy":
            assert {"unfused", "packed"} <= variants, (backend, variants)
            phases = {t["phase"] for t in timings if t["backend"] == backend}
            assert phases == {"forward", "train"}, (backend, phases)
    for t in timings:
        stats = t["stats"]
        assert 0 < stats["q1"] <= stats["median"] <= stats["q3"], t
        assert stats["reps"] >= 3, t


def test_memory_and_keras_step_were_measured(quick_run):
    result = quick_run["result"]
    from glu_kernels.backends.torch import _ATEN_TRAINING_MAX_ELEMENTS

    for backend in ("torch", "jax"):
        shape_name, per_dtype = next(iter(result["memory"][backend].items()))
        shape = result["shapes"][shape_name]
        dtype, per_act = next(iter(per_dtype.items()))
        silu = per_act["silu"]
        fused, unfused = silu["fused (save=activations)"], silu["unfused"]
        small = shape["B"] * 2 * shape["U"] <= _ATEN_TRAINING_MAX_ELEMENTS
        if backend == "torch" and dtype in ("float32", "float64") and small:
            # small float training calls are the plain ATen calls: they keep what those keep
            assert fused["activation_bytes"] == silu["packed"]["activation_bytes"], silu
        else:
            assert 0 < fused["activation_bytes"] < unfused["activation_bytes"], silu
        assert silu["fused (save=input)"]["largest_saved_non_input_elems"] == 0, silu
    keras = {k["backend"]: k for k in result["keras"]}
    assert set(keras) == {"jax", "torch", "tensorflow"}, keras
    for backend, k in keras.items():
        assert "skipped" not in k, (backend, k.get("skipped"))
        assert k["results"] and all(r["ratio_glu_to_kmr"] > 0 for r in k["results"])
        for r in k["results"]:
            int8 = r["int8_predict"]
            assert set(int8["stats"]) == {"glu_keras float", "glu_keras int8", "kmr_style int8"}
            assert int8["ratio_glu_to_kmr"] > 0 and int8["ratio_int8_to_float"] > 0


def test_plot_table_and_readme_section(quick_run):
    from benchmarks import readme
    from glu_kernels import available_backends

    png = quick_run["dir"] / "latest.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "GEMM floor" in quick_run["stdout"]
    section = readme.section(quick_run["result"], "benchmarks/results/latest.png")
    assert section.startswith(readme.START) and section.endswith(readme.END)
    assert "| torch |" in section and "Machine:" in section
    assert 'after `model.quantize("int8")`' in section
    assert 'after model.quantize("int8")' in quick_run["stdout"]
    by_backend = section.split("by backend", 1)[1].split("\n\n", 2)[1]  # the table after it
    header, _, *rows = by_backend.splitlines()
    timed = [b for b in ("torch", "jax", "tensorflow") if b in available_backends()]
    assert header == "| shape | dtype | phase | " + " | ".join(timed) + " |", header
    assert rows and all(row.count("**") == 2 for row in rows), rows  # one fastest per row


def _gpu_result() -> dict:
    """A small synthetic ``--device cuda`` result: one forward row of torch timings."""

    def row(variant: str, median: float) -> dict:
        stats = {"median": median, "q1": median * 0.99, "q3": median * 1.01, "iqr_pct": 2.0}
        return dict(
            backend="torch",
            shape="ffn",
            dtype="float32",
            phase="forward",
            variant=variant,
            what=variant,
            stats=stats,
        )

    gpu = {
        "name": "Some GPU",
        "memory_gib": 80.0,
        "multiprocessors": 100,
        "capability": "9.0",
        "cuda": "13.0",
        "tf32_matmul": False,
    }
    return {
        "mode": "default",
        "activation": "sigmoid",
        "device": "cuda:1",
        "argv": ["--device", "cuda:1", "--shapes", "ffn"],
        "machine": {"cpu": "Some CPU", "torch": "2.x", "gpu": gpu},
        "plan": {"shapes": ["ffn"]},
        "shapes": {"ffn": {"label": "2048x1024->1024"}},
        "elapsed_s": 1.0,
        "timings": [row("floor", 1e-3), row("fused", 1.1e-3), row("unfused", 1.5e-3)],
        "memory": {},
        "keras": [],
    }


def test_gpu_result_renders_into_its_own_readme_section(tmp_path):
    """A ``--device cuda`` result goes between the bench-gpu markers, naming the GPU and the command
    that made it, without the CPU targets; the CPU section stays as it was."""
    from benchmarks import readme, report

    gpu = _gpu_result()
    assert report.targets(gpu) == []  # the targets are for the CPU
    text = f"head\n{readme.START}\nold cpu\n{readme.END}\n{readme.GPU_START}\nold gpu\n"
    text += f"{readme.GPU_END}\ntail\n"
    path = tmp_path / "README.md"
    path.write_text(text)
    readme.update(path, gpu, "benchmarks/results/latest-cuda1.png")
    new = path.read_text()
    gpu_section = new.split(readme.GPU_START, 1)[1].split(readme.GPU_END, 1)[0]
    assert "Some GPU" in gpu_section, gpu_section
    assert "`python -m benchmarks --device cuda:1 --shapes ffn`" in gpu_section, gpu_section
    assert "| torch | 2048x1024->1024 | float32 | forward | 1 | 1.10x (2%)" in gpu_section
    assert "| target |" not in gpu_section and "old gpu" not in gpu_section
    assert f"{readme.START}\nold cpu\n{readme.END}" in new and new.endswith("tail\n")


@pytest.mark.parametrize(
    "device", ["cuda", "cuda:7", "gpu", "cuda:x", "cuda:", "cuda:01", "cuda:²"]
)
def test_bench_refuses_a_device_it_cannot_see(device):
    torch = pytest.importorskip("torch")
    from benchmarks.__main__ import main

    if torch.cuda.device_count() > 7:
        pytest.skip("eight CUDA devices are visible")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(SystemExit, match=rf"--device {device}: expected cpu or a CUDA device"):
        main(["--device", device])


def test_bench_refuses_a_device_run_without_a_device_backend():
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit, match=r"--backends tensorflow,numpy: expected at least one of"):
        main(["--device", "cuda", "--backends", "tensorflow,numpy"])


def test_gpu_index_parses_only_cuda_devices():
    from benchmarks.cases import gpu_index

    assert (gpu_index("cuda"), gpu_index("cuda:0"), gpu_index("cuda:12")) == (0, 0, 12)
    for device in ("cpu", "gpu", "cuda:", "cuda:01", "cuda:-1", "cuda:1:2", "cuda:²", "CUDA"):
        assert gpu_index(device) is None, device


def test_stored_command_repeats_the_run_without_output_options():
    from benchmarks.__main__ import _args, _command

    argv = ["--quick", "--backends", "torch", "--out", "/tmp/x", "--update-r", "--no-keras"]
    assert _command(_args(argv)) == ["--quick", "--backends", "torch", "--no-keras"]
    assert _command(_args([])) == []
    argv = ["--shapes", "ffn", "--device", "cuda:1", "--activation", "silu", "--dtypes", "float32"]
    assert _command(_args(argv)) == [
        "--shapes",
        "ffn",
        "--dtypes",
        "float32",
        "--activation",
        "silu",
        "--device",
        "cuda:1",
    ]


def test_update_readme_with_a_plot_outside_the_repository_fails_before_timing(
    tmp_path, monkeypatch
):
    import benchmarks.__main__ as bench

    def timed(*args, **kwargs):
        raise AssertionError("timed before the plot's path was checked")

    monkeypatch.setattr(bench, "measure", timed)
    main = bench.main
    with pytest.raises(SystemExit, match=r"expected a file inside the repository"):
        main(["--quick", "--update-readme", "--out", str(tmp_path)])
