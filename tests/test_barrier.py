"""The kernels' libraries link lucid_tvm's barrier (``kernels/barrier.cc``) and their parallel
steps meet at it; a library without it keeps TVM's. That the parallel steps still compute the
same numbers as one thread is ``test_variants_give_identical_answers``."""

import ctypes
import os

import numpy as np

import lucid_tvm.nn as nn
from lucid_tvm import barrier, build, runtime


def _barrier_slot(path):
    library = ctypes.CDLL(str(path), mode=os.RTLD_NOLOAD | os.RTLD_NOW)
    return ctypes.c_void_p.in_dll(library, "__TVMBackendParallelBarrier").value, library


def test_parallel_steps_meet_at_our_barrier():
    layer = nn.GRU(8, 8)
    layer(np.zeros((2, 1, 8), np.float32))
    entry = runtime.registered(layer.layers[0]._kernel().identity)
    slot, library = _barrier_slot(entry.path)
    assert slot == ctypes.cast(library.lucid_tvm_parallel_barrier, ctypes.c_void_p).value


def test_library_without_our_barrier_keeps_tvms(tmp_path):
    _, lower, _ = build.lower_identity(("layer", "RNN_TANH", 8, 8, "float32"), build.host_target())
    path = tmp_path / "plain.so"
    build.tvm.tirx.build(lower(), target=build.host_target()).export_library(str(path))
    barrier.load_module(path)
    slot, library = _barrier_slot(path)
    assert slot is not None  # TVM's loader filled it with its own barrier
    assert not hasattr(library, "lucid_tvm_parallel_barrier")
    assert not barrier.use_our_barrier(path)


def _library_with_our_barrier(directory):
    _, lower, _ = build.lower_identity(("layer", "GRU", 8, 8, "float32"), build.host_target())
    path = directory / "ours.so"
    barrier.export_library(build.tvm.tirx.build(lower(), target=build.host_target()), path)
    return path


def test_loaded_through_a_symlink(tmp_path):
    """TVM opens the library by its real path; ours finds it there too."""
    link = tmp_path / "link.so"
    link.symlink_to(_library_with_our_barrier(tmp_path))
    barrier.load_module(link)
    slot, library = _barrier_slot(link.resolve())
    assert slot == ctypes.cast(library.lucid_tvm_parallel_barrier, ctypes.c_void_p).value


def test_tvms_barrier_on_request(tmp_path, monkeypatch):
    """LUCID_TVM_BARRIER=tvm keeps TVM's barrier (for a TVM runtime built with OpenMP)."""
    monkeypatch.setenv("LUCID_TVM_BARRIER", "tvm")
    path = _library_with_our_barrier(tmp_path)
    barrier.load_module(path)
    slot, library = _barrier_slot(path)
    assert slot != ctypes.cast(library.lucid_tvm_parallel_barrier, ctypes.c_void_p).value
