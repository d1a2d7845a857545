"""Peak memory of one PyTorch call on the CPU, counted tensor by tensor: the most bytes of tensor
storage that the call had allocated and not yet freed at any moment.

torch has no CPU counterpart of ``torch.cuda.max_memory_allocated``, and the process's resident set
is blurred by the allocator (freed blocks kept, pages reused). So a ``TorchDispatchMode`` sees every
ATen op the call runs, forward and backward (the CPU autograd engine runs on the calling thread):
each new storage an op returns adds its bytes; a weak-reference finalizer subtracts them when the
storage dies. Outputs that alias an input (views, ``out=`` and in-place ops) allocate nothing.
The project's custom op ``glu_kernels::glu`` runs through its CPU kernel with the mode still
active, so the temporaries inside it count too. Tensors that existed before the call (inputs,
weights) are not counted: the figure is what the call adds.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_CPU = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


def _storages(tree) -> list[torch.UntypedStorage]:
    return [t.untyped_storage() for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]


class _LiveStorageBytes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._counted: set[int] = set()

    def _free(self, ptr: int, nbytes: int) -> None:
        self._counted.discard(ptr)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "glu_kernels":
            with self:  # its kernel's ATen ops come back through this mode
                out = func.redispatch(_CPU, *args, **kwargs)
        else:
            out = func(*args, **kwargs)
        inputs = {s.data_ptr() for s in _storages((args, kwargs))}
        for storage in _storages(out):
            ptr = storage.data_ptr()
            if ptr and ptr not in inputs and ptr not in self._counted:
                self._counted.add(ptr)
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, ptr, storage.nbytes())
        return out


def peak_bytes(fn: Callable[[], object]) -> int:
    """The peak of tensor bytes allocated and still alive during ``fn()`` (run once to warm up,
    then measured), beyond the tensors that existed before it.

    Example:
        >>> x = torch.ones(1024)
        >>> peak_bytes(lambda: (x * 2) + 1)  # x * 2 and its sum with 1 are alive together
        8192
    """
    fn()
    tracker = _LiveStorageBytes()
    with tracker:
        fn()
    return tracker.peak
