"""Rewrites the README's benchmark section, between its bench:start and bench:end markers only."""

from __future__ import annotations

from pathlib import Path

from benchmarks.report import _index, targets
from benchmarks.variants import FLOOR, LABELS, ORDER

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def section(result: dict, png: str) -> str:
    m = result["machine"]
    idx = _index(result["timings"])
    variants = [v for v in ORDER if v != FLOOR]
    lines = [
        START,
        "## Benchmark",
        "",
        f"`nox -s bench` ({result['mode']} run, activation `{result['activation']}`, "
        f"{result['elapsed_s']:.0f} s). Each cell: median time as a multiple of the GEMM floor "
        "(forward: `x @ [W|V] + b`; train: the three GEMMs `x@W2`, `dh@W2^T`, `x^T@dh`), "
        "IQR in % of the median; variants timed interleaved in one process.",
        "",
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, "
        f"AVX-512: {'yes' if m.get('avx512') else 'no'}, "
        f"AMX: {'yes' if m.get('amx') else 'no (not exposed)'}; "
        + ", ".join(
            f"{k} {m[k]}"
            for k in ("torch", "jax", "tensorflow", "numpy")
            if isinstance(m.get(k), str)
        )
        + f"; threads: torch {m.get('threads_torch', {})}, TF {m.get('threads_tensorflow', {})}.",
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
    lines += ["", f"![each variant as % of its GEMM floor]({png})", "", END]
    return "\n".join(lines)


def update(readme: Path, result: dict, png: str) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme}: markers {START} ... {END} not found; nothing written")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + section(result, png) + tail)
