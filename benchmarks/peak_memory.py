"""Peak memory of one call, read from the kernel: the rise of the process's resident-set high-water
mark (``VmHWM``, reset through ``/proc/self/clear_refs``) above the resident set before the call.

glibc is told to serve every allocation of 64 KiB or more with its own mmap and to unmap it on free
(``mallopt(M_MMAP_THRESHOLD)``, which also stops the threshold from adapting), so resident memory
follows the live tensors instead of a heap that keeps freed blocks. Linux only; None elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

_M_MMAP_THRESHOLD = -3
_configured: bool | None = None


def _configure() -> bool:
    global _configured
    if _configured is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"))
            _configured = bool(libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024))
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except (OSError, AttributeError):
            _configured = False
    return _configured


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_bytes(fn: Callable[[], object]) -> int | None:
    """Bytes by which the resident set peaked above its level before ``fn()`` (run once to warm
    up, then measured), or None where the kernel does not expose it."""
    if not _configure():
        return None
    fn()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    before = _status_bytes("VmRSS:")
    fn()
    return max(0, _status_bytes("VmHWM:") - before)
