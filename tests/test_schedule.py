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


@pytest.mark.parametrize("target", ["llvm -mcpu=znver4", "llvm -mcpu=znver4 -num-cores=2",
                                    "llvm -mtriple=aarch64-linux-gnu -mattr=+neon -num-cores=8"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_wide_blocks_only_where_narrower_ones_do_no_less_work(target, dtype):
    """Blocks of 4 vectors only where blocks of 2 would neither pad the layer less nor leave the
    core with the most blocks fewer columns: on 2 cores an RNN of 160 (192 columns in blocks of 4)
    and one of 192 (128 columns on one core) take blocks of 2, one of 256 or 100 keeps 4."""
    target = parse_target(target)
    simd, cores = vector_lanes(target, dtype), int(target.attrs.get("num-cores", 1))

    def most_columns(hidden, lanes, n):
        return -(-(-(-hidden // lanes)) // n) * lanes

    seen = set()
    for hidden in range(3 * simd + 1, 801):  # (narrower layers get blocks no wider than themselves)
        lanes = default_schedule(target, 1, hidden, dtype).lanes
        narrower = any(most_columns(hidden, 2 * simd, n) < most_columns(hidden, 4 * simd, n) for n in (1, cores))
        assert lanes == (2 * simd if narrower else 4 * simd), (hidden, lanes)
        seen.add(lanes // simd)
    assert seen == {2, 4}


@pytest.mark.parametrize("hidden, cores, vectors", [(160, 1, 2), (192, 1, 4), (192, 2, 2), (256, 2, 4),
                                                    (256, 8, 2), (100, 2, 4), (300, 1, 4), (300, 2, 2)])
def test_rnn_block_width_examples(hidden, cores, vectors):
    target = parse_target(f"llvm -mcpu=znver4 -num-cores={cores}")
    assert default_schedule(target, 1, hidden, "float32").lanes == 16 * vectors
