"""Describes the machine a run measured: CPU, its vector/matrix flags, cores, threads, versions."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import re


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return model, flags
    if m := re.search(r"^model name\s*:\s*(.+)$", text, re.M):
        model = m.group(1).strip()
    if m := re.search(r"^flags\s*:\s*(.+)$", text, re.M):
        flags = sorted(
            f for f in m.group(1).split() if re.match(r"avx512|amx|avx_vnni|avx2|fma", f)
        )
    return model, flags


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe(backends: tuple[str, ...], device: str = "cpu") -> dict:
    model, flags = _cpu_model_and_flags()
    info: dict = {
        "cpu": model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_flags": flags,
        "amx": any(f.startswith("amx") for f in flags),
        "avx512": any(f.startswith("avx512") for f in flags),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": _version("numpy"),
        "env": {k: v for k, v in os.environ.items() if k in _ENV_KEYS},
        "threads": {},
    }
    for name in backends:
        try:
            info.update(_framework(name))
        except ImportError as e:
            info[name] = f"not installed ({e})"
    if device.startswith("cuda"):
        info["gpu"] = _gpu(device)
    return info


def _gpu(device: str) -> dict:
    import torch

    props = torch.cuda.get_device_properties(device)
    return {
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    }


_ENV_KEYS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "XLA_FLAGS",
    "TF_NUM_INTEROP_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "ONEDNN_MAX_CPU_ISA",
    "TF_ENABLE_ONEDNN_OPTS",
)


def _framework(name: str) -> dict:
    if name == "torch":
        import torch

        return {
            "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_mkldnn": torch.backends.mkldnn.is_available(),
            "threads_torch": {
                "intra_op": torch.get_num_threads(),
                "inter_op": torch.get_num_interop_threads(),
            },
        }
    if name == "jax":
        import jax
        import jaxlib

        return {
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "jax_devices": [str(d) for d in jax.devices()],
        }
    if name == "tensorflow":
        import tensorflow as tf

        return {
            "tensorflow": tf.__version__,
            "threads_tensorflow": {
                "intra_op": tf.config.threading.get_intra_op_parallelism_threads()
                or "default (cores)",
                "inter_op": tf.config.threading.get_inter_op_parallelism_threads()
                or "default (cores)",
            },
        }
    if name == "numpy":
        import numpy as np

        return {"numpy": np.__version__}
    importlib.import_module(name)
    return {}
