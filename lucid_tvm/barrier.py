"""Shared libraries of compiled kernels, with lucid_tvm's own barrier for their parallel steps.

The hidden-split recurrence (``kernels/recurrent.py``) meets at a barrier once per step. TVM
0.27's ``TVMBackendParallelBarrier`` calls ``sched_yield`` on every check of its wait loop, a
system call each time the other task is not there yet. ``kernels/barrier.cc`` keeps TVM's
protocol but spins on the CPU's pause hint first. On the 2-core VM of ``docs/perf`` a step that
does nothing but meet took 0.23 us with TVM's and 0.09 us with ours, and a parallel step of RNN
256 at batch 1 went from 1.6-1.8 to 1.4-1.6 us (``scripts/barrier_ab.py``).

The barrier is compiled into every shared library of kernels (:func:`export_library`: the kernel
cache and artifacts; a module built in memory because the cache cannot be written keeps TVM's).
TVM calls its backend functions through slots in the library that its loader fills with its own;
:func:`load_module` points the barrier slot at ours. A library without ours (an artifact written
before it existed) keeps TVM's; both use the same counters, so they may even meet each other.

Ours relies on TVM's own thread pool, as in the pinned wheel, whose launcher allocates the
counters. A TVM runtime built from source with OpenMP has none: set ``LUCID_TVM_BARRIER=tvm`` to
keep TVM's barrier there. Only TVM's runtime is needed here.
"""

import ctypes
import os
import warnings
from pathlib import Path

import tvm

SOURCE = Path(__file__).parent / "kernels" / "barrier.cc"
_SLOT, _SYMBOL = "__TVMBackendParallelBarrier", "lucid_tvm_parallel_barrier"


def export_library(module, path, fcompile=None):
    """Write ``module`` as a shared library at ``path`` with the barrier linked in; a ``.tar``
    path gets the object files and ``barrier.cc`` to link on the target machine."""
    if str(path).endswith(".tar"):
        module.export_library(str(path), addons=[str(SOURCE)])
    else:
        module.export_library(str(path), fcompile=fcompile, addons=[str(SOURCE)], options=["-O2"])


def load_module(path):
    """The module in the shared library at ``path``, its parallel steps meeting at our barrier."""
    module = tvm.runtime.load_module(str(path))
    use_our_barrier(path)
    return module


def barrier_slot(path):
    """``(slot, ours)`` of the loaded library at ``path``: its barrier slot (a ctypes pointer,
    whose ``value`` the parallel steps call) and the address of our barrier in it. OSError when
    the library is not loaded; ValueError or AttributeError when it has no parallel code or no
    barrier of ours."""
    # The library TVM has loaded, by the real path TVM opened (RTLD_NOLOAD: never a second copy).
    library = ctypes.CDLL(os.path.realpath(path), mode=os.RTLD_NOLOAD | os.RTLD_NOW)
    ours = ctypes.cast(getattr(library, _SYMBOL), ctypes.c_void_p).value
    return ctypes.c_void_p.in_dll(library, _SLOT), ours


def use_our_barrier(path):
    """Point the barrier slot of the loaded library at ``path`` to the barrier linked into it.
    False when it has no parallel code or no barrier of ours, or ``LUCID_TVM_BARRIER=tvm``."""
    if os.environ.get("LUCID_TVM_BARRIER") == "tvm":
        return False
    try:
        slot, ours = barrier_slot(path)
    except OSError as err:
        warnings.warn(f"lucid_tvm: cannot reach the loaded library {path} ({err}); its parallel "
                      "steps keep TVM's barrier", stacklevel=3)
        return False
    except (ValueError, AttributeError):  # no parallel code, or written before our barrier
        return False
    slot.value = ours
    return True
