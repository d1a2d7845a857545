"""A Keras training step: a model with glu_keras.GatedLinearUnit vs the same model with the
KMR-style two-Dense layer, under one Keras backend; and their inference after
``model.quantize("int8")``, against the fused layer's in floating point. Keras picks its backend
once per process, so ``run`` starts ``python -m benchmarks.keras_step`` once per backend with
KERAS_BACKEND set; the child prints one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

from benchmarks.cases import SHAPES


def run(
    backend: str, shapes: tuple[str, ...], dtype: str, budget_s: float, timeout_s: float = 180
) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend)
    cmd = [sys.executable, "-m", "benchmarks.keras_step", ",".join(shapes), dtype, str(budget_s)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"backend": backend, "skipped": f"timed out after {timeout_s:.0f} s"}
    lines = [l_ for l_ in proc.stdout.splitlines() if l_.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"backend": backend, "skipped": f"exit {proc.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


def _child(shape_names: str, dtype: str, budget_s: float) -> dict:
    import keras
    import numpy as np

    backend = keras.backend.backend()
    try:
        from glu_keras import GatedLinearUnit
    except ImportError as e:
        return {"backend": backend, "skipped": f"glu_keras not importable: {e}"}
    try:
        from glu_keras._kmr import KMRStyleGatedLinearUnit
    except ImportError as e:
        return {"backend": backend, "skipped": f"glu_keras._kmr.KMRStyleGatedLinearUnit: {e}"}
    from benchmarks.timing import measure

    keras.config.set_dtype_policy("mixed_bfloat16" if dtype == "bfloat16" else "float32")
    results = []
    for name in shape_names.split(","):
        s = SHAPES[name]
        rng = np.random.default_rng(0)
        x = rng.standard_normal((s.batch, s.features)).astype("float32")
        y = rng.standard_normal((s.batch, s.units)).astype("float32")
        layers = {"glu_keras": GatedLinearUnit, "kmr_style": KMRStyleGatedLinearUnit}

        def model_of(layer_cls):
            keras.utils.set_random_seed(0)
            inp = keras.Input((s.features,))
            model = keras.Model(inp, layer_cls(units=s.units)(inp))
            model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse", jit_compile="auto")
            return model

        models = {key: model_of(layer_cls) for key, layer_cls in layers.items()}

        def step(m):
            return lambda: float(m.train_on_batch(x, y))  # float(): synchronises every backend

        stats = measure({k: step(m) for k, m in models.items()}, budget_s=budget_s, warmup=3)
        quantized = {f"{key} int8": model_of(layer_cls) for key, layer_cls in layers.items()}
        with warnings.catch_warnings():  # "InputLayer does not have a quantize method"
            warnings.simplefilter("ignore")
            for model in quantized.values():
                model.quantize("int8")

        def predict(m):
            return lambda: m.predict_on_batch(x)  # NumPy out: synchronised

        inference = measure(
            {"glu_keras float": predict(models["glu_keras"])}
            | {k: predict(m) for k, m in quantized.items()},
            budget_s=budget_s,
            warmup=3,
        )
        results.append(
            {
                "shape": name,
                "label": s.label,
                "stats": {k: v.to_dict() for k, v in stats.items()},
                "ratio_glu_to_kmr": stats["glu_keras"].median / stats["kmr_style"].median,
                "int8_predict": {
                    "stats": {k: v.to_dict() for k, v in inference.items()},
                    "ratio_glu_to_kmr": inference["glu_keras int8"].median
                    / inference["kmr_style int8"].median,
                    "ratio_int8_to_float": inference["glu_keras int8"].median
                    / inference["glu_keras float"].median,
                },
            }
        )
    return {
        "backend": backend,
        "keras": keras.__version__,
        "dtype_policy": keras.config.dtype_policy().name,
        "jit_compile": "auto",
        "results": results,
    }


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], sys.argv[2], float(sys.argv[3]))))
