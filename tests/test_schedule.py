"""The default schedules' knobs, for CPUs other than this one too (no kernel is compiled)."""

import pytest

from lucid_tvm.build import parse_target
from lucid_tvm.schedule import default_schedule, vector_lanes


@pytest.mark.parametrize("target", ["llvm -mcpu=znver4", "llvm -mcpu=haswell",
                                    "llvm -mtriple=aarch64-linux-gnu -mattr=+neon"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_blocks_are_a_power_of_two_vectors_no_wider_than_the_layer(target, dtype):
    """Blocks of 3 vectors (48 lanes: RNN hidden sizes 33-48 on AVX-512) compiled to steps 3-18x
    slower than blocks of 2 or 4; a block wider than the layer would compute padding only."""
    target = parse_target(target)
    simd = vector_lanes(target, dtype)
    for gates in (1, 3, 4):
        for hidden in range(1, 301):
            vectors, rest = divmod(default_schedule(target, gates, hidden, dtype).lanes, simd)
            assert rest == 0 and vectors in (1, 2, 4), (gates, hidden, vectors)
            assert vectors == 1 or (vectors // 2) * simd < hidden, (gates, hidden, vectors)


# (target, dtype, hidden size, vectors a block): blocks of 4 vectors unless blocks of 2 pad the layer
# less (RNN 160 in float32 on AVX-512: 160 columns, not 192) or leave the core with the most blocks
# fewer columns (RNN 192 on 2 cores: 96 columns a core, not 128); where both tie, 4.
@pytest.mark.parametrize("target, dtype, hidden, vectors", [
    ("llvm -mcpu=znver4", "float32", 160, 2), ("llvm -mcpu=znver4", "float32", 192, 4),
    ("llvm -mcpu=znver4 -num-cores=2", "float32", 192, 2), ("llvm -mcpu=znver4 -num-cores=2", "float32", 256, 4),
    ("llvm -mcpu=znver4 -num-cores=8", "float32", 256, 2), ("llvm -mcpu=znver4 -num-cores=2", "float32", 100, 4),
    ("llvm -mcpu=znver4", "float32", 300, 4), ("llvm -mcpu=znver4 -num-cores=2", "float32", 300, 2),
    ("llvm -mcpu=znver4", "float64", 80, 2), ("llvm -mcpu=znver4", "float64", 96, 4),
    ("llvm -mcpu=znver4 -num-cores=2", "float64", 96, 2),
    ("llvm -mtriple=aarch64-linux-gnu -mattr=+neon", "float32", 40, 2),
    ("llvm -mtriple=aarch64-linux-gnu -mattr=+neon", "float32", 48, 4),
    ("llvm -mtriple=aarch64-linux-gnu -mattr=+neon -num-cores=8", "float32", 48, 2)])
def test_rnn_blocks_of_two_vectors_where_they_do_less_work(target, dtype, hidden, vectors):
    target = parse_target(target)
    assert default_schedule(target, 1, hidden, dtype).lanes == vector_lanes(target, dtype) * vectors


@pytest.mark.parametrize("target, registers", [
    ("llvm -mcpu=haswell", 16), ("llvm -mcpu=znver4 -mattr=-avx512f", 16), ("llvm -mcpu=znver4", 32),
    ("llvm -mtriple=aarch64-linux-gnu -mattr=+neon", 32)])
def test_a_tile_fits_in_the_vector_registers(target, registers):
    """A tile's accumulators, its block's weight vectors and the broadcast input fit in the 16
    (AVX2) or 32 vector registers; one more row spilled them to the stack every k, at half the
    speed (an AVX2 LSTM projection: 72 GFLOP/s with 4 rows, 145 with 2)."""
    target = parse_target(target)
    for gates in (1, 3, 4):
        for hidden in (8, 32, 33, 100, 256, 1024):
            schedule = default_schedule(target, gates, hidden, "float32")
            vectors = gates * schedule.lanes // vector_lanes(target, "float32")
            assert schedule.rows * vectors + vectors + 1 <= registers, (gates, hidden, schedule)
            assert 2 <= schedule.rows <= 8
            if schedule.wide is not None:  # fits too, and keeps more accumulators than a full tile
                rows, wide_gates = schedule.wide
                pass_vectors = vectors // gates * wide_gates
                assert rows * pass_vectors + pass_vectors + 1 <= registers, (gates, hidden, schedule)
                assert rows % schedule.rows == 0 and gates % wide_gates == 0 and rows <= 8
                assert rows * pass_vectors > schedule.rows * vectors
    assert default_schedule(target, 4, 256, "float32").rows == (2 if registers == 16 else 6)
    # An AVX2 LSTM's 2 rows of 4 gates keep 8 accumulators; 6 rows of 2 gates at a time keep 12.
    assert default_schedule(target, 4, 256, "float32").wide == ((6, 2) if registers == 16 else None)
