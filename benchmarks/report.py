"""The report: a rich table in the terminal, the raw JSON, and a PNG of each variant as % of its
floor."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.variants import COMPILED, FLOOR, FUSED, LABELS, ORDER, UNFUSED

PHASES = ("forward", "train")


def _index(timings: list[dict]) -> dict:
    idx: dict = {}
    for r in timings:
        idx.setdefault((r["backend"], r["shape"], r["dtype"], r["phase"]), {})[r["variant"]] = r
    return idx


def _ms(s: float) -> str:
    return f"{s * 1e3:.3g}" if s >= 1e-3 else f"{s * 1e6:.3g}us".replace("us", " µs")


@dataclass(frozen=True)
class _TimeTarget:
    name: str  # may name {phase}
    applies: Callable[[str, str, str, str], bool]  # (backend, shape, dtype, phase)
    bound: float
    # the fused time is divided by the fastest of these variants' (a baseline is never the weaker
    # form of the formula: for the unfused one, eager or compiled, whichever is faster)
    baseline: tuple[str, ...] = (FLOOR,)
    inverse: bool = False  # report baseline/fused, met when >= bound (a fraction of the floor)


_TIME_TARGETS = (
    _TimeTarget(
        "forward fused/GEMM floor <= 1.05",
        lambda b, s, d, p: p == "forward" and s != "seed" and b != "numpy",
        1.05,
    ),
    _TimeTarget(
        "train fused/3-GEMM floor <= 1.10", lambda b, s, d, p: (s, p) == ("ffn", "train"), 1.10
    ),
    _TimeTarget(
        "train fused/unfused (eager or compiled, the faster) <= 0.90",
        lambda b, s, d, p: (s, p) == ("ffn", "train"),
        0.90,
        (UNFUSED, COMPILED),
    ),
    _TimeTarget(
        "small: torch glu / bare GEMM (addmm or mm, the faster) <= 1.5",
        lambda b, s, d, p: (b, s, d, p) == ("torch", "seed", "float32", "forward"),
        1.5,
    ),
    _TimeTarget(
        "bf16 torch {phase}: floor/fused >= 0.80",
        lambda b, s, d, p: b == "torch" and d == "bfloat16" and s != "seed",
        0.80,
        inverse=True,
    ),
)


def _row(target: str, key: tuple, value: float, met: bool | None, spread=None) -> dict:
    backend, shape, dtype = key
    return dict(
        target=target,
        backend=backend,
        shape=shape,
        dtype=dtype,
        value=value,
        spread=spread,
        met=met,
    )


def targets(result: dict) -> list[dict]:
    """Each target of issue 5, with the measured figure and whether it is met; none for a GPU run
    (the targets are stated for the CPU of the project's machine)."""
    if result.get("device", "cpu") != "cpu":
        return []
    idx = _index(result["timings"])
    rows = []

    def ratio(key, a, baselines):
        row = idx.get(key, {})
        present = [b for b in baselines if b in row]
        if a in row and present:
            b = min(present, key=lambda v: row[v]["stats"]["median"])
            sa, sb = row[a]["stats"], row[b]["stats"]
            return sa["median"] / sb["median"], (sa["q1"] / sb["q3"], sa["q3"] / sb["q1"])
        return None, (None, None)

    for key in idx:
        backend, shape, dtype, phase = key
        for t in _TIME_TARGETS:
            if not t.applies(backend, shape, dtype, phase):
                continue
            r, (lo, hi) = ratio(key, FUSED, t.baseline)
            if r is None:
                continue
            value, spread = (1 / r, (1 / hi, 1 / lo)) if t.inverse else (r, (lo, hi))
            met = value >= t.bound if t.inverse else value <= t.bound
            rows.append(_row(t.name.format(phase=phase), key[:3], value, met, spread))
    for backend, per_shape in result.get("memory", {}).items():
        for shape, per_dtype in per_shape.items():
            for dtype, m in per_dtype.items():
                if "silu" not in m:
                    continue
                mm = m["silu"]
                f, u, inp = mm["fused (save=activations)"], mm["unfused"], mm["fused (save=input)"]
                key = (backend, shape, dtype)
                if u["activation_bytes"]:
                    r = f["activation_bytes"] / u["activation_bytes"]
                    rows.append(
                        _row(
                            "SwiGLU saved (beyond x,w,b) fused/unfused <= 2/3",
                            key,
                            r,
                            r <= 2 / 3 + 1e-9,
                        )
                    )
                    r = f["total_bytes"] / u["total_bytes"]
                    rows.append(_row("SwiGLU saved (all incl. x,w,b) fused/unfused", key, r, None))
                pf, pu = f.get("peak_step_bytes"), u.get("peak_step_bytes")
                if pf and pu:
                    target = "SwiGLU peak of a training step fused/unfused (no target)"
                    rows.append(_row(target, key, pf / pu, None))
                rel = inp["largest_saved_non_input_elems"] / inp["B*U"]
                rows.append(
                    _row("save=input: largest saved non-input/(B*U) < 1", key, rel, rel < 1)
                )
    return rows


BY_BACKEND_TITLE = (
    "glu_kernels.glu itself, median ms, by backend (fastest in bold; the backends ran one after "
    "another in this process, not interleaved, so differences under ~15% are noise)"
)


def fused_by_backend(result: dict) -> tuple[list[str], list[tuple[str, str, str, dict]]]:
    """glu_kernels.glu's own median seconds per backend (NumPy aside), for choosing a backend:
    ``(backends, [(shape, dtype, phase, {backend: seconds}), ...])``; no rows for one backend."""
    idx = _index(result["timings"])
    backends = list(dict.fromkeys(k[0] for k in idx if k[0] != "numpy"))
    if len(backends) < 2:
        return backends, []
    rows = []
    for shape, dtype, phase in dict.fromkeys(k[1:] for k in idx if k[0] in backends):
        seconds = {
            b: idx[(b, shape, dtype, phase)][FUSED]["stats"]["median"]
            for b in backends
            if FUSED in idx.get((b, shape, dtype, phase), {})
        }
        if seconds:
            rows.append((shape, dtype, phase, seconds))
    return backends, rows


def by_backend_cells(seconds: dict, backends: list[str], fastest: str) -> list[str]:
    """One row of the by-backend table: milliseconds, "-" where a backend has no time, the
    fastest formatted with ``fastest`` (e.g. "**{}**")."""
    best = min(seconds, key=seconds.get)
    cells = []
    for b in backends:
        ms = "-" if b not in seconds else f"{seconds[b] * 1e3:.3g}"
        cells.append(fastest.format(ms) if b == best else ms)
    return cells


def print_tables(result: dict, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    idx = _index(result["timings"])
    backends = dict.fromkeys(k[0] for k in idx)
    for backend in backends:
        table = Table(
            title=f"{backend}: median time as x GEMM floor (IQR % of median)", title_justify="left"
        )
        for col in ("shape", "dtype", "phase", "floor ms"):
            table.add_column(col)
        present = [
            v
            for v in ORDER
            if v != FLOOR and any(v in row for k, row in idx.items() if k[0] == backend)
        ]
        for v in present:
            table.add_column(LABELS[v], justify="right")
        for (b, shape, dtype, phase), row in idx.items():
            if b != backend or FLOOR not in row:
                continue
            floor = row[FLOOR]["stats"]
            cells = []
            for v in present:
                if v not in row:
                    cells.append("-")
                    continue
                s = row[v]["stats"]
                r = s["median"] / floor["median"]
                style = "green" if r <= 1.05 else ("yellow" if r <= 1.25 else "red")
                cells.append(f"[{style}]{r:.2f}x[/] ({s['iqr_pct']:.0f}%)")
            table.add_row(
                result["shapes"][shape]["label"],
                dtype,
                phase,
                f"{floor['median'] * 1e3:.3g} ({floor['iqr_pct']:.0f}%)",
                *cells,
            )
        console.print(table)
    backends, rows = fused_by_backend(result)
    if rows:
        table = Table(title=BY_BACKEND_TITLE, title_justify="left")
        for col in ("shape", "dtype", "phase", *backends):
            table.add_column(col, justify="right" if col in backends else "left")
        for shape, dtype, phase, seconds in rows:
            cells = by_backend_cells(seconds, backends, fastest="[bold]{}[/]")
            table.add_row(result["shapes"][shape]["label"], dtype, phase, *cells)
        console.print(table)
    if result.get("memory"):
        table = Table(
            title="memory: saved for backward beyond x, w, b / saved in all / "
            "peak of a training step "
            "(torch: tensor bytes allocated and alive; jax: XLA scratch of the jitted step)",
            title_justify="left",
        )
        for col in (
            "backend",
            "shape",
            "dtype",
            "act",
            "fused",
            "fused save=input",
            "unfused",
            "packed",
            "fused/unfused",
        ):
            table.add_column(col)
        for backend, per_shape in result["memory"].items():
            for shape, per_dtype in per_shape.items():
                for dtype, per_act in per_dtype.items():
                    for act, m in per_act.items():

                        def f(k):
                            if k not in m:
                                return "-"
                            peak = m[k].get("peak_step_bytes")
                            return (
                                f"{m[k]['activation_bytes'] / 2**20:.2f} / "
                                f"{m[k]['total_bytes'] / 2**20:.2f} / "
                                + ("-" if peak is None else f"{peak / 2**20:.1f}")
                                + " MiB"
                            )

                        u = m["unfused"]["activation_bytes"]
                        r = (
                            m["fused (save=activations)"]["activation_bytes"] / u
                            if u
                            else float("nan")
                        )
                        table.add_row(
                            backend,
                            result["shapes"][shape]["label"],
                            dtype,
                            act,
                            f("fused (save=activations)"),
                            f("fused (save=input)"),
                            f("unfused"),
                            f("packed"),
                            f"{r:.3f}",
                        )
        console.print(table)
    if result.get("keras"):
        table = Table(
            title="Keras training step (train_on_batch): glu_keras / KMR-style",
            title_justify="left",
        )
        for col in ("backend", "dtype policy", "shape", "glu_keras ms", "kmr_style ms", "ratio"):
            table.add_column(col)
        for k in result["keras"]:
            if "skipped" in k:
                table.add_row(k["backend"], "-", "-", "-", "-", f"skipped: {k['skipped'][:80]}")
                continue
            for r in k["results"]:
                g, m = r["stats"]["glu_keras"], r["stats"]["kmr_style"]
                table.add_row(
                    k["backend"],
                    k.get("dtype_policy", "-"),
                    r["label"],
                    f"{g['median'] * 1e3:.3g} ({g['iqr_pct']:.0f}%)",
                    f"{m['median'] * 1e3:.3g} ({m['iqr_pct']:.0f}%)",
                    f"{r['ratio_glu_to_kmr']:.2f}x",
                )
        console.print(table)
    int8_rows = [(k, r) for k in result.get("keras", []) for r in k.get("results", [])]
    int8_rows = [(k, r["int8_predict"], r["label"]) for k, r in int8_rows if "int8_predict" in r]
    if int8_rows:
        table = Table(
            title='Keras inference (predict_on_batch) after model.quantize("int8")',
            title_justify="left",
        )
        columns = ("glu_keras float", "glu_keras int8", "kmr_style int8")
        for col in ("backend", "dtype policy", "shape", *(f"{c} ms" for c in columns)):
            table.add_column(col)
        table.add_column("int8: glu_keras / kmr_style")
        for k, q, label in int8_rows:
            cells = [q["stats"][c] for c in columns]
            table.add_row(
                k["backend"],
                k.get("dtype_policy", "-"),
                label,
                *(f"{c['median'] * 1e3:.3g} ({c['iqr_pct']:.0f}%)" for c in cells),
                f"{q['ratio_glu_to_kmr']:.2f}x",
            )
        console.print(table)
    rows = targets(result)
    if rows:
        table = Table(
            title=escape("targets (issue 5); spread = [q1/q3', q3/q1'] of the two distributions"),
            title_justify="left",
        )
        for col in ("target", "backend", "shape", "dtype", "measured", "spread", "met"):
            table.add_column(col)
        for r in rows:
            sp = f"{r['spread'][0]:.2f}-{r['spread'][1]:.2f}" if r["spread"] else ""
            met = {True: "[green]yes[/]", False: "[red]no[/]", None: ""}[r["met"]]
            table.add_row(
                r["target"],
                r["backend"],
                result["shapes"][r["shape"]]["label"],
                r["dtype"],
                f"{r['value']:.3f}",
                sp,
                met,
            )
        console.print(table)


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result | {"targets": targets(result)}, indent=1, default=str) + "\n")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = _index(result["timings"])
    backends = [b for b in dict.fromkeys(k[0] for k in idx)]
    fig, axes = plt.subplots(
        len(PHASES), len(backends), figsize=(4.2 * len(backends), 7), squeeze=False
    )
    colors = {
        v: c
        for v, c in zip(
            ORDER, ("tab:green", "tab:red", "tab:orange", "tab:purple", "tab:gray"), strict=True
        )
    }
    for i, phase in enumerate(PHASES):
        for j, backend in enumerate(backends):
            ax = axes[i][j]
            groups = [
                (k, row)
                for k, row in idx.items()
                if k[0] == backend and k[3] == phase and FLOOR in row
            ]
            variants = [v for v in ORDER if v != FLOOR and any(v in row for _, row in groups)]
            width = 0.8 / max(1, len(variants))
            for n, v in enumerate(variants):
                xs, ys, err = [], [], [[], []]
                for g, (_, row) in enumerate(groups):
                    if v in row:
                        f, s = row[FLOOR]["stats"]["median"], row[v]["stats"]
                        xs.append(g + n * width)
                        ys.append(100 * s["median"] / f)
                        err[0].append(100 * (s["median"] - s["q1"]) / f)
                        err[1].append(100 * (s["q3"] - s["median"]) / f)
                ax.bar(xs, ys, width, yerr=err, label=LABELS[v], color=colors[v], capsize=2)
            ax.axhline(100, color="k", lw=0.8)
            ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
            ax.set_xticklabels(
                [
                    f"{result['shapes'][k[1]]['label']}\n{k[2].replace('float', 'f')}"
                    for k, _ in groups
                ],
                fontsize=6,
                rotation=45,
                ha="right",
            )
            ax.set_yscale("log")
            ax.set_title(f"{backend} {phase}", fontsize=9)
            if j == 0:
                ax.set_ylabel("% of GEMM floor (log)")
            if i == 0 and j == len(backends) - 1:
                ax.legend(fontsize=6)
    fig.suptitle(
        "each variant as % of its GEMM floor (x@[W|V]+b; train: 3 GEMMs; fastest forms); "
        "bars: median, whiskers: IQR",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
