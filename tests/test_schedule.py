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


@pytest.mark.parametrize("target", ["llvm -mcpu=znver4", "llvm -mtriple=aarch64-linux-gnu -mattr=+neon"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_wide_blocks_pad_no_more_than_narrower_ones(target, dtype):
    """Blocks of 4 vectors only where blocks of 2 would not pad the layer less: an RNN of 160 takes
    blocks of 2 (160 columns) rather than 4 (192), one of 192 or 100 keeps 4."""
    target = parse_target(target)
    simd = vector_lanes(target, dtype)
    padded = lambda hidden, lanes: -(-hidden // lanes) * lanes  # noqa: E731
    seen = set()
    for hidden in range(1, 601):
        lanes = default_schedule(target, 1, hidden, dtype).lanes
        if hidden > 3 * simd:  # (narrower layers get blocks no wider than themselves)
            assert lanes in (2 * simd, 4 * simd), (hidden, lanes)
            narrower = padded(hidden, 2 * simd) < padded(hidden, 4 * simd)
            assert lanes == (2 * simd if narrower else 4 * simd), (hidden, lanes)
            seen.add(lanes // simd)
    assert seen == {2, 4}
