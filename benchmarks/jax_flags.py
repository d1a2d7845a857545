"""Which XLA:CPU flags make JAX's GEMMs (and glu) faster on this machine: `python -m
benchmarks.jax_flags`.

XLA_FLAGS are read once per process, so every configuration runs in its own subprocess. To cancel
the machine's drift between processes, each child also times a NumPy GEMM of the same shape
(unaffected by XLA flags; one thread, so it does not fight XLA's pool) and reports JAX times as
multiples of it, beside the raw medians; configurations run in rotated order, twice each. A flag
that jaxlib does not know makes the child fail ("Unknown flags in XLA_FLAGS"): reported as such."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

CONFIGS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_fusion_dot": "--xla_cpu_experimental_onednn_fusion_type=dot",
    "onednn_fusion_dot_eltwise": "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise",
    "onednn_custom_call": (
        "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true"
    ),
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "ynn_fusion_dot": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "no_xnnpack": "--xla_cpu_use_xnnpack=false",
}


def _child(shape: tuple[int, int, int], budget_s: float) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import glu_kernels
    from benchmarks.timing import measure

    b_, d, u = shape
    rng = np.random.default_rng(0)
    out: dict = {}
    for dtype in ("float32", "bfloat16"):
        x64 = rng.standard_normal((b_, d))
        w64 = rng.standard_normal((d, 2 * u)) / np.sqrt(d)
        b64 = rng.standard_normal(2 * u) * 0.1
        x, w, b = (jnp.asarray(t.astype(np.float32)).astype(dtype) for t in (x64, w64, b64))
        dy = jnp.ones((b_, u), dtype)
        xn, wn = np.asarray(x, np.float32), np.asarray(w, np.float32)
        gemm = jax.jit(lambda x, w, b: x @ w + b)
        train = jax.jit(lambda x, w, b, dy: jax.vjp(lambda *a: glu_kernels.glu(*a), x, w, b)[1](dy))
        stats = measure(
            {
                "numpy_gemm_f32": lambda: xn @ wn,
                "jax_gemm": lambda: gemm(x, w, b).block_until_ready(),
                "jax_glu": lambda: glu_kernels.glu(x, w, b).block_until_ready(),
                "jax_glu_train": lambda: jax.block_until_ready(train(x, w, b, dy)),
            },
            budget_s=budget_s,
            min_reps=5,
        )
        ref = np.asarray(x, np.float64) @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
        err = float(
            np.max(np.abs(np.asarray(gemm(x, w, b), np.float64) - ref)) / np.max(np.abs(ref))
        )
        yard = stats["numpy_gemm_f32"].median
        out[dtype] = {
            k: {"median_s": v.median, "iqr_pct": v.iqr_pct, "x_numpy_f32_gemm": v.median / yard}
            for k, v in stats.items()
        } | {"gemm_rel_err": err}
    return out


def run(shape=(2048, 1024, 1024), budget_s: float = 3.0, rounds: int = 2, configs=None) -> dict:
    configs = configs or CONFIGS
    results: dict = {name: [] for name in configs}
    names = list(configs)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            env = dict(
                os.environ, XLA_FLAGS=configs[name], OPENBLAS_NUM_THREADS="1"
            )  # a quiet yardstick
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.jax_flags",
                "--child",
                ",".join(map(str, shape)),
                str(budget_s),
            ]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            lines = [l_ for l_ in proc.stdout.splitlines() if l_.startswith("{")]
            if proc.returncode or not lines:
                err = (proc.stderr.strip().splitlines() or ["?"])[-1]
                results[name].append({"error": err[:300]})
            else:
                results[name].append(json.loads(lines[-1]))
            print(f"  {name}: done (round {r + 1})", file=sys.stderr, flush=True)
    summary = {}
    for name, runs in results.items():
        ok = [x for x in runs if "error" not in x]
        if not ok:
            summary[name] = {"flags": configs[name], "error": runs[0]["error"]}
            continue
        summary[name] = {"flags": configs[name]}
        for dtype in ("float32", "bfloat16"):
            summary[name][dtype] = (
                {
                    k: statistics.median(x[dtype][k]["x_numpy_f32_gemm"] for x in ok)
                    for k in ("jax_gemm", "jax_glu", "jax_glu_train")
                }
                | {
                    f"{k}_ms": 1e3 * statistics.median(x[dtype][k]["median_s"] for x in ok)
                    for k in ("jax_gemm", "jax_glu", "jax_glu_train")
                }
                | {"gemm_rel_err": max(x[dtype]["gemm_rel_err"] for x in ok)}
            )
    return {"shape": shape, "rounds": rounds, "summary": summary, "raw": results}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        shape = tuple(int(s) for s in sys.argv[2].split(","))
        print(json.dumps(_child(shape, float(sys.argv[3]))))
        return
    from pathlib import Path

    res = run()
    path = Path(__file__).parent / "results" / "jax_flags.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(
        f"shape {res['shape']}: times as multiples of a NumPy float32 GEMM of the same shape "
        "(lower is better), median of rounds"
    )
    for name, s in res["summary"].items():
        if "error" in s:
            print(f"{name:28s} {s['flags']!r}: ERROR {s['error']}")
            continue
        cells = "  ".join(
            f"{dt[:4]} gemm {s[dt]['jax_gemm']:.2f} ({s[dt]['jax_gemm_ms']:.1f} ms) "
            f"glu {s[dt]['jax_glu']:.2f} ({s[dt]['jax_glu_ms']:.1f}) "
            f"train {s[dt]['jax_glu_train']:.2f} ({s[dt]['jax_glu_train_ms']:.1f}) "
            f"err {s[dt]['gemm_rel_err']:.1e}"
            for dt in ("float32", "bfloat16")
        )
        print(f"{name:28s} {cells}   [{s['flags']}]")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
