"""The project's benchmark: `nox -s bench`, or `python -m benchmarks [--quick | --full] ...`.

Per backend, shape and dtype it times glu_kernels.glu, the unfused formula, one GEMM + the
framework's glu, the framework's compiler on the unfused formula, and the GEMM floors, forward and
forward+backward, interleaved in one process; measures the bytes kept for backward; runs a Keras
training step per Keras backend in a subprocess; prints rich tables and writes results/latest.json
and results/latest.png (results/latest-cuda.json and .png for ``--device cuda``)."""

from __future__ import annotations

import argparse
import importlib
import time
from datetime import UTC, datetime
from pathlib import Path

import glu_kernels
from benchmarks import keras_step, machine, readme, report
from benchmarks.cases import BACKENDS, DEVICE_BACKENDS, SHAPES, gpu_index, plan
from benchmarks.timing import measure
from glu_kernels._validate import resolve_activation

HERE = Path(__file__).parent
CASE_MODULES = {
    "torch": "torch_cases",
    "jax": "jax_cases",
    "tensorflow": "tf_cases",
    "numpy": "numpy_cases",
}
MEMORY_BACKENDS = ("torch", "jax")  # TensorFlow exposes no per-op saved-tensor accounting


def _activation(name: str) -> str:
    """The canonical name of an activation or alias ("swish" -> "silu"), as argparse's type."""
    try:
        return resolve_activation(name).name
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="CI smoke: 2 small shapes, few reps (< 1 min)"
    )
    mode.add_argument(
        "--full", action="store_true", help="adds 2048x4096->11008 and longer budgets"
    )
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset")
    p.add_argument("--shapes", default=None, help=f"comma-separated subset of {','.join(SHAPES)}")
    p.add_argument("--dtypes", default=None, help="comma-separated subset of float32,bfloat16")
    p.add_argument(
        "--activation",
        default="sigmoid",
        type=_activation,
        help=f"gate activation timed: {', '.join(glu_kernels.ACTIVATIONS)} (default: sigmoid)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), or cuda[:N]: torch and JAX on GPU N (default 0; no Keras, no memory)",
    )
    p.add_argument("--no-keras", action="store_true", help="skip the Keras training step")
    p.add_argument("--no-memory", action="store_true", help="skip the saved-bytes measurement")
    p.add_argument(
        "--update-readme", action="store_true", help="rewrite the README's bench section"
    )
    p.add_argument(
        "--out", type=Path, default=HERE / "results", help="where latest[-cuda].json/.png go"
    )
    return p.parse_args(argv)


def _gpus_seen(backend: str) -> tuple[int, str]:
    """How many GPUs ``backend`` sees, and its name and version for a message."""
    if backend == "torch":
        import torch

        return torch.cuda.device_count(), f"torch {torch.__version__}"
    import jax

    try:
        return len(jax.devices("gpu")), f"jax {jax.__version__}"
    except RuntimeError:  # no GPU platform in this jaxlib
        return 0, f"jax {jax.__version__}"


def _check_device(device: str, backends: tuple[str, ...]) -> None:
    """Exits with a clear message unless every backend in ``backends`` sees the GPU asked for."""
    index = gpu_index(device)
    for backend in backends:
        count, who = _gpus_seen(backend)
        if index is None or index >= count:
            raise SystemExit(
                f"--device {device}: expected cpu or a CUDA device (cuda, cuda:N) that every "
                f"backend asked for can see; {who} sees {count} GPU(s)"
            )


def _command(args) -> list[str]:
    """The options that shaped a run (not --out or --update-readme), to show how to repeat it."""
    command = ["--quick"] if args.quick else ["--full"] if args.full else []
    for option in ("backends", "shapes", "dtypes"):
        value = getattr(args, option)
        if value is not None and not (option == "backends" and value == ",".join(BACKENDS)):
            command += [f"--{option}", value]
    if args.activation != "sigmoid":
        command += ["--activation", args.activation]
    if args.device != "cpu":
        command += ["--device", args.device]
    return command + [
        f"--{flag}" for flag in ("no-keras", "no-memory") if getattr(args, flag.replace("-", "_"))
    ]


def main(argv=None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    args = _args(argv)
    command = _command(args)
    root = HERE.parent
    stem = "latest" if args.device == "cpu" else f"latest-{args.device.replace(':', '')}"
    json_path, png_path = args.out / f"{stem}.json", args.out / f"{stem}.png"
    if args.update_readme:  # fail now, not after the timing
        png_link = readme.link(png_path, root)
    backends = tuple(b for b in args.backends.split(",") if b)
    if args.device != "cpu":  # TensorFlow's and NumPy's cases are CPU-only
        backends = tuple(b for b in backends if b in DEVICE_BACKENDS)
        if not backends:
            raise SystemExit(
                f"--device {args.device} --backends {args.backends}: expected at least one of "
                f"{', '.join(DEVICE_BACKENDS)} (the others run on the CPU only)"
            )
        _check_device(args.device, backends)
        args.no_keras = args.no_memory = True
    console = Console()
    if not console.is_terminal:
        console = Console(width=170)
    t_start = time.perf_counter()
    mode = "quick" if args.quick else "full" if args.full else "default"
    pl = plan(mode, backends)
    shapes = tuple(args.shapes.split(",")) if args.shapes else pl.shapes
    dtypes = tuple(args.dtypes.split(",")) if args.dtypes else pl.dtypes

    mods = {}
    for b in pl.backends:
        try:
            mods[b] = importlib.import_module(f"benchmarks.{CASE_MODULES[b]}")
        except ImportError as e:
            console.print(f"[yellow]skipping {b}: {e}[/]")
    result: dict = {
        "mode": mode,
        "activation": args.activation,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": args.device,
        "argv": command,  # how to run it again (the README section shows it)
        "machine": machine.describe(tuple(mods), args.device),
        "plan": {
            "shapes": shapes,
            "dtypes": dtypes,
            "budget_s": pl.budget_s,
            "min_reps": pl.min_reps,
            "max_reps": pl.max_reps,
            "torch_compile": pl.compile_torch,
        },
        "shapes": {
            n: {"label": s.label, "B": s.batch, "D": s.features, "U": s.units}
            for n, s in SHAPES.items()
        },
        "timings": [],
        "memory": {},
        "keras": [],
    }
    m = result["machine"]
    console.print(
        f"[bold]machine[/]: {m['cpu']}, {m['cores']} cores, avx512={m['avx512']}, amx={m['amx']}, "
        + ", ".join(f"{k} {m[k]}" for k in ("torch", "jax", "tensorflow") if k in m)
        + f", threads torch={m.get('threads_torch')} tf={m.get('threads_tensorflow')}"
        + (f"; GPU: {m['gpu']['name']}" if "gpu" in m else "")
    )

    groups = [(b, s, d) for b in mods for s in shapes for d in dtypes]
    keras_backends = () if args.no_keras else ("jax", "torch", "tensorflow")
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(
            "benchmark", total=len(groups) + len(keras_backends) + (0 if args.no_memory else 1)
        )
        for backend, shape_name, dtype in groups:
            shape = SHAPES[shape_name]
            progress.update(task, description=f"{backend} {shape.label} {dtype}")
            compile_ = pl.compile_torch if backend == "torch" else True
            try:
                on = {"device": args.device} if args.device != "cpu" else {}
                variants = mods[backend].variants(shape, dtype, args.activation, compile_, **on)
            except Exception as e:  # noqa: BLE001 - report, go on with the other cases
                console.print(f"[red]{backend} {shape.label} {dtype}: setup failed: {e!r}[/]")
                variants = []
            for phase in report.PHASES:
                fns = {v.key: (v.forward if phase == "forward" else v.train) for v in variants}
                fns = {k: f for k, f in fns.items() if f is not None}
                if "floor" not in fns or len(fns) < 2:
                    continue
                try:
                    stats = measure(
                        fns, budget_s=pl.budget_s, min_reps=pl.min_reps, max_reps=pl.max_reps
                    )
                except Exception as e:  # noqa: BLE001
                    console.print(f"[red]{backend} {shape.label} {dtype} {phase}: {e!r}[/]")
                    continue
                what = {v.key: v.what for v in variants}
                for key, st in stats.items():
                    result["timings"].append(
                        {
                            "backend": backend,
                            "shape": shape_name,
                            "dtype": dtype,
                            "phase": phase,
                            "variant": key,
                            "what": what[key],
                            "stats": st.to_dict(),
                            "ratio_to_floor": st.median / stats["floor"].median,
                        }
                    )
            del variants
            progress.advance(task)
        if not args.no_memory:
            progress.update(task, description="bytes saved for backward")
            for backend in MEMORY_BACKENDS:
                if backend not in mods:
                    continue
                for shape_name in shapes:
                    if shape_name == "llama":
                        continue
                    for dtype in dtypes:
                        per = result["memory"].setdefault(backend, {}).setdefault(shape_name, {})
                        per[dtype] = {
                            act: mods[backend].saved_bytes(SHAPES[shape_name], dtype, act)
                            for act in ("sigmoid", "silu")
                        }
            progress.advance(task)
        for kb in keras_backends:
            progress.update(task, description=f"keras training step ({kb})")
            for dtype in ("float32",) if mode == "quick" else ("float32", "bfloat16"):
                res = keras_step.run(kb, pl.keras_shapes, dtype, pl.keras_budget_s)
                res["dtype"] = dtype
                result["keras"].append(res)
                if "skipped" in res:
                    break
            progress.advance(task)

    result["elapsed_s"] = time.perf_counter() - t_start
    if not result["timings"]:
        console.print("nothing was timed (every case's setup failed, see above): no table, no plot")
        return 1
    report.print_tables(result, console)
    report.write_json(result, json_path)
    report.plot(result, png_path)
    console.print(f"wrote {json_path} and {png_path}; {result['elapsed_s']:.0f} s")
    if args.update_readme:
        readme.update(root / "README.md", result, png_link)
        console.print(f"updated {root / 'README.md'} (bench section)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
