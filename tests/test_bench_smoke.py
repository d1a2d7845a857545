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
    for backend in ("torch", "jax"):
        per_dtype = next(iter(result["memory"][backend].values()))
        silu = next(iter(per_dtype.values()))["silu"]
        fused, unfused = silu["fused (save=activations)"], silu["unfused"]
        assert 0 < fused["activation_bytes"] < unfused["activation_bytes"], silu
        assert silu["fused (save=input)"]["largest_saved_non_input_elems"] == 0, silu
    keras = {k["backend"]: k for k in result["keras"]}
    assert set(keras) == {"jax", "torch", "tensorflow"}, keras
    for backend, k in keras.items():
        assert "skipped" not in k, (backend, k.get("skipped"))
        assert k["results"] and all(r["ratio_glu_to_kmr"] > 0 for r in k["results"])


def test_plot_table_and_readme_section(quick_run):
    from benchmarks import readme

    png = quick_run["dir"] / "latest.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "GEMM floor" in quick_run["stdout"]
    section = readme.section(quick_run["result"], "benchmarks/results/latest.png")
    assert section.startswith(readme.START) and section.endswith(readme.END)
    assert "| torch |" in section and "Machine:" in section
