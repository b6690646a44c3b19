"""What the compiled CPU kernels must not contain, checked on the LLVM IR TVM generates."""

from lucid_tvm import build
from lucid_tvm.schedule import compile_module


def test_tile_scratch_stays_on_the_stack():
    """The accumulators and gate values of every tile are stack arrays (registers, once LLVM is
    done), not TVM workspaces: with TVM's default passes each one is a TVMBackendAllocWorkspace /
    FreeWorkspace call pair, once per hidden block and step in the parallel recurrence."""
    target = build.host_target()
    _, lower, _ = build.lower_identity(("layer", "LSTM", 8, 8, "float32"), target)
    with_default_passes = build.tvm.tirx.build(lower(), target=target).inspect_source("ll")
    assert "TVMBackendAllocWorkspace" in with_default_passes  # what this test guards against
    assert "TVMBackendAllocWorkspace" not in compile_module(lower(), target).inspect_source("ll")
