"""Rewrites the README's benchmark section, between its markers only: bench:start/end for the CPU
run, bench-gpu:start/end for a ``--device cuda`` run.

A saved result is rendered again by ``python -m benchmarks.readme RESULT.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.report import (
    BY_BACKEND_TITLE,
    _index,
    by_backend_cells,
    fused_by_backend,
    targets,
)
from benchmarks.variants import FLOOR, LABELS, ORDER

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
GPU_START, GPU_END = "<!-- bench-gpu:start -->", "<!-- bench-gpu:end -->"


def markers(result: dict) -> tuple[str, str]:
    """The README markers of a result's section: the CPU's, or the GPU's for a --device run."""
    return (START, END) if result.get("device", "cpu") == "cpu" else (GPU_START, GPU_END)


def _versions(m: dict) -> str:
    return ", ".join(
        f"{k} {m[k]}" for k in ("torch", "jax", "tensorflow", "numpy") if isinstance(m.get(k), str)
    )


def _what_runs(result: dict, variants: list[str]) -> list[str]:
    """One line per backend: what each column but the floor runs (its first row's ``what``)."""
    seen: dict[str, dict[str, str]] = {}
    for row in result["timings"]:
        if row["variant"] != FLOOR:
            seen.setdefault(row["backend"], {}).setdefault(row["variant"], row["what"])
    return ["What the columns run:", ""] + [
        f"- {backend}: " + "; ".join(f"{LABELS[v]}: `{whats[v]}`" for v in variants if v in whats)
        for backend, whats in seen.items()
    ]


def _by_backend(result: dict) -> list[str]:
    backends, rows = fused_by_backend(result)
    if not rows:
        return []
    caveat = ""
    gpu = result["machine"].get("gpu")
    if gpu is not None and "jax" in backends:
        tf32 = "on" if gpu["tf32_matmul"] else "off"
        caveat = (
            f" On a GPU the float32 rows are not like for like: torch's TF32 matmuls are {tf32}, "
            "JAX runs float32 matmuls at its default precision (TF32 on recent NVIDIA GPUs)."
        )
    title = BY_BACKEND_TITLE.replace("glu_kernels.glu", "`glu_kernels.glu`", 1)
    lines = [
        "",
        f"{title}.{caveat}",
        "",
        "| shape | dtype | phase | " + " | ".join(backends) + " |",
        "|---|---|---|" + "---:|" * len(backends),
    ]
    for shape, dtype, phase, seconds in rows:
        cells = by_backend_cells(seconds, backends, fastest="**{}**")
        label = result["shapes"][shape]["label"]
        lines.append(f"| {label} | {dtype} | {phase} | " + " | ".join(cells) + " |")
    return lines


def section(result: dict, png: str) -> str:
    m = result["machine"]
    idx = _index(result["timings"])
    variants = [v for v in ORDER if v != FLOOR]
    start, end = markers(result)
    argv = " ".join(result.get("argv", []))
    if result.get("device", "cpu") == "cpu":
        heading = "## Benchmark"
        command = f"`nox -s bench -- {argv}`" if argv else "`nox -s bench`"
        where = (
            f"Machine: {m.get('cpu')}, {m.get('cores')} cores, "
            f"AVX-512: {'yes' if m.get('avx512') else 'no'}, "
            f"AMX: {'yes' if m.get('amx') else 'no (not exposed)'}; {_versions(m)}; "
            f"threads: torch {m.get('threads_torch', {})}, TF {m.get('threads_tensorflow', {})}."
        )
    else:
        heading = "### On a GPU"
        gpu = m["gpu"]
        if not argv:  # a result written before the command was stored
            argv = f"--device {result['device']} --shapes {','.join(result['plan']['shapes'])}"
        command = f"`python -m benchmarks {argv}`"
        where = (
            f"Machine: {gpu['name']} ({gpu['memory_gib']} GiB, {gpu['multiprocessors']} SMs, "
            f"compute capability {gpu['capability']}, CUDA {gpu['cuda']}, TF32 matmuls in torch: "
            f"{'on' if gpu['tf32_matmul'] else 'off'}), host {m.get('cpu')}; {_versions(m)}. "
            "Every call ends in a device synchronisation."
        )
    lines = [
        start,
        heading,
        "",
        f"{command} ({result['mode']} run, activation `{result['activation']}`, "
        f"{result['elapsed_s']:.0f} s). Each cell: median time as a multiple of the GEMM floor "
        "(forward: `x @ [W|V] + b`; train: the three GEMMs `x@W2`, `dh@W2^T`, `x^T@dh`; each "
        "timed at setup in its forms, and the fastest kept: with or without the bias, one GEMM "
        "or two of half width, `x^T` read transposed or copied; the form kept is the floor's "
        "`what` in the JSON), IQR in % of the median; variants timed interleaved in one process.",
        "",
        where,
        "",
        *_what_runs(result, variants),
        "",
        "| backend | shape | dtype | phase | floor ms | "
        + " | ".join(LABELS[v] for v in variants)
        + " |",
        "|---|---|---|---|---:|" + "---:|" * len(variants),
    ]
    for (backend, shape, dtype, phase), row in idx.items():
        if FLOOR not in row:
            continue
        f = row[FLOOR]["stats"]["median"]
        cells = []
        for v in variants:
            if v in row:
                s = row[v]["stats"]
                cells.append(f"{s['median'] / f:.2f}x ({s['iqr_pct']:.0f}%)")
            else:
                cells.append("-")
        lines.append(
            f"| {backend} | {result['shapes'][shape]['label']} | {dtype} | {phase} | "
            f"{f * 1e3:.3g} | " + " | ".join(cells) + " |"
        )
    lines += _by_backend(result)
    rows = targets(result)
    if rows:
        lines += [
            "",
            "| target | backend | shape | dtype | measured | met |",
            "|---|---|---|---|---:|---|",
        ]
        for r in rows:
            met = {True: "yes", False: "**no**", None: ""}[r["met"]]
            lines.append(
                f"| {r['target']} | {r['backend']} | {result['shapes'][r['shape']]['label']} | "
                f"{r['dtype']} | {r['value']:.3f} | {met} |"
            )
    keras_rows = [(k, r) for k in result.get("keras", []) for r in k.get("results", [])]
    if keras_rows:
        lines += [
            "",
            "Keras training step, `GatedLinearUnit` / KMR-style two-Dense layer: "
            + ", ".join(
                f"{k['backend']} {r['label']} {k.get('dtype_policy', '')}: "
                f"{r['ratio_glu_to_kmr']:.2f}x"
                for k, r in keras_rows
            ),
        ]
    int8_rows = [(k, r) for k, r in keras_rows if "int8_predict" in r]
    if int8_rows:
        lines += [
            "",
            'Keras inference after `model.quantize("int8")`, `GatedLinearUnit` / KMR-style '
            "(and / the fused layer in floating point): "
            + ", ".join(
                f"{k['backend']} {r['label']} {k.get('dtype_policy', '')}: "
                f"{r['int8_predict']['ratio_glu_to_kmr']:.2f}x "
                f"({r['int8_predict']['ratio_int8_to_float']:.2f}x)"
                for k, r in int8_rows
            ),
        ]
    lines += ["", f"![each variant as % of its GEMM floor]({png})", "", end]
    return "\n".join(lines)


def link(png: Path, root: Path) -> str:
    """The plot's path as the README at ``root`` links it; exits if the plot lies outside."""
    png = png.resolve()
    if not png.is_relative_to(root.resolve()):
        raise SystemExit(f"plot {png}: expected a file inside the repository {root}")
    return png.relative_to(root.resolve()).as_posix()


def update(readme: Path, result: dict, png: str) -> None:
    text = readme.read_text()
    start, end = markers(result)
    if start not in text or end not in text:
        raise SystemExit(f"{readme}: markers {start} ... {end} not found; nothing written")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(head + section(result, png) + tail)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.readme", description="README section from a saved result"
    )
    p.add_argument("result", type=Path, help="a JSON file written by python -m benchmarks")
    p.add_argument("--png", type=Path, help="its plot (default: the JSON's path, .png)")
    args = p.parse_args(argv)
    root = Path(__file__).resolve().parent.parent
    png = args.png or args.result.with_suffix(".png")
    update(root / "README.md", json.loads(args.result.read_text()), link(png, root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
