"""Every mode x layers x bias x batch_first x bidirectional x hx form x dtype against torch.nn."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch

import lucid_tvm.nn as nn
from conftest import assert_close, torch_twin

MODES = ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]
I, H, T, B = 5, 7, 6, 3


def _hidden(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("hx_form", ["none", "full", "2d"])
@pytest.mark.parametrize("num_layers,bidirectional", list(itertools.product([1, 2], [False, True])))
@pytest.mark.parametrize("bias,batch_first", list(itertools.product([True, False], [False, True])))
@pytest.mark.parametrize("mode", MODES)
def test_matches_torch(mode, bias, batch_first, num_layers, bidirectional, hx_form, dtype, rng):
    ref, ours = torch_twin(mode, I, H, dtype, num_layers=num_layers, bias=bias,
                           batch_first=batch_first, bidirectional=bidirectional)
    stack = num_layers * (2 if bidirectional else 1)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    if hx_form == "none":
        hx = None
    else:
        shape = (stack, B, H) if hx_form == "full" else (B, H)
        hx = _hidden(rng, shape, dtype)
        if mode == "LSTM":
            hx = (hx, _hidden(rng, shape, dtype))
    if hx_form == "2d" and stack != 1:
        with pytest.raises(ValueError, match="2-D"):
            ours(x, hx)
        return

    def as_torch(v):
        if v is None:
            return None
        if isinstance(v, tuple):
            return tuple(as_torch(e) for e in v)
        v = torch.from_numpy(v)
        return v[None] if v.ndim == 2 else v

    with torch.no_grad():
        ref_out, ref_state = ref(torch.from_numpy(x), as_torch(hx))
    out, state = ours(x, hx)
    assert_close(out, ref_out, dtype)
    if mode == "LSTM":
        assert_close(state[0], ref_state[0], dtype)
        assert_close(state[1], ref_state[1], dtype)
    else:
        assert_close(state, ref_state, dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_unbatched_sequence(mode, bidirectional, rng):
    ref, ours = torch_twin(mode, I, H, num_layers=2, bidirectional=bidirectional)
    stack = 2 * (2 if bidirectional else 1)
    x = rng.standard_normal((T, I)).astype(np.float32)
    h = rng.standard_normal((stack, H)).astype(np.float32)
    hx = (h, h * 0.5) if mode == "LSTM" else h
    thx = tuple(torch.from_numpy(v) for v in hx) if mode == "LSTM" else torch.from_numpy(h)
    with torch.no_grad():
        ref_out, ref_state = ref(torch.from_numpy(x), thx)
    out, state = ours(x, hx)
    assert_close(out, ref_out)
    assert_close(state[0] if mode == "LSTM" else state, ref_state[0] if mode == "LSTM" else ref_state)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_empty_batch_gives_empty_outputs_as_in_torch(mode, batch_first, rng):
    ref, ours = torch_twin(mode, I, H, num_layers=2, bidirectional=True, batch_first=batch_first)
    x = np.zeros((0, T, I) if batch_first else (T, 0, I), np.float32)
    h = np.zeros((4, 0, H), np.float32)
    hx = (h, h) if mode == "LSTM" else h
    torch_hx = tuple(map(torch.from_numpy, hx)) if mode == "LSTM" else torch.from_numpy(h)
    for args, torch_args in (((), ()), ((hx,), (torch_hx,))):
        with torch.no_grad():
            expected = ref(torch.from_numpy(x), *torch_args)
        out, state = ours(x, *args)
        assert_close(out, expected[0])
        for got, want in zip(state if mode == "LSTM" else (state,),
                             expected[1] if mode == "LSTM" else (expected[1],)):
            assert_close(got, want)
    cell = {"RNN_TANH": nn.RNNCell, "RNN_RELU": nn.RNNCell, "LSTM": nn.LSTMCell, "GRU": nn.GRUCell}[mode](I, H)
    outputs = cell(np.zeros((0, I), np.float32))
    assert all(o.shape == (0, H) for o in (outputs if mode == "LSTM" else (outputs,)))


@pytest.mark.parametrize("mode", MODES)
def test_new_sequence_lengths_and_batches(mode, rng):
    ref, ours = torch_twin(mode, I, H)
    for steps, batch in [(1, 1), (17, 2), (3, 9), (40, 5)]:
        x = rng.standard_normal((steps, batch, I)).astype(np.float32)
        with torch.no_grad():
            ref_out = ref(torch.from_numpy(x))[0]
        assert_close(ours(x)[0], ref_out)


@pytest.mark.parametrize("mode", MODES)
def test_wide_layers_use_the_parallel_path(mode, rng):
    # 300 units: several SIMD blocks with a ragged tail, and enough work per step to run parallel.
    ref, ours = torch_twin(mode, 33, 300)
    x = rng.standard_normal((4, 6, 33)).astype(np.float32)
    with torch.no_grad():
        ref_out = ref(torch.from_numpy(x))[0]
    assert_close(ours(x)[0], ref_out)


@pytest.mark.parametrize("batch_first", [False, True])  # batch-first: the first layer copies chunk by chunk
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("input_size,hidden_size,steps,batch", [
    (33, 300, 500, 1),  # two chunks: 256 and 244 steps (RNN: 409 and 91)
    (33, 300, 61, 9),  # chunks of 28, 28 and 5 steps (RNN: 45, 16): odd chunks end on the other state buffer
    (33, 300, 13, 40),  # parallel steps with a ragged tail block, chunks of 6, 6 and 1 (RNN: 10, 3)
    (12, 12, 700, 3),  # small steps: the recurrence that projects as it goes, chunks of 341, 341 and 18
])
def test_long_sequences_run_in_chunks(mode, input_size, hidden_size, steps, batch, batch_first, rng):
    from lucid_tvm import runtime
    from lucid_tvm.schedule import chunk_steps

    kernel = runtime.layer_kernel(mode, input_size, hidden_size, "float32")
    assert chunk_steps(steps, batch, kernel.row_bytes) < steps
    ref, ours = torch_twin(mode, input_size, hidden_size, num_layers=2, bidirectional=True, batch_first=batch_first)
    x = rng.standard_normal((batch, steps, input_size) if batch_first else (steps, batch, input_size))
    x = x.astype(np.float32)
    with torch.no_grad():
        ref_out, ref_state = ref(torch.from_numpy(x))
    out, state = ours(x)
    assert_close(out, ref_out)
    for got, want in zip(state, ref_state) if mode == "LSTM" else [(state, ref_state)]:
        assert_close(got, want)


@pytest.mark.parametrize("batch_first, layout, gathered", [
    (True, "batch-first", True),  # copied a chunk at a time by gather
    (True, "time-major underneath", False),  # a batch-first layer's output: read in place
    (True, "float64", False),  # cast: one time-major copy
    (False, "batch-first underneath", True),  # torch's x.transpose(0, 1) of a batch-first x: gather
])
def test_input_layouts(batch_first, layout, gathered, monkeypatch, rng):
    from lucid_tvm import runtime

    calls = []
    gather = runtime._Plan.gather
    monkeypatch.setattr(runtime._Plan, "gather", lambda plan, *args: calls.append(args) or gather(plan, *args))
    ref, ours = torch_twin("LSTM", I, H, num_layers=2, bidirectional=True, batch_first=batch_first)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    if layout in ("time-major underneath", "batch-first underneath"):
        x = np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2)
    x = x if layout == "float64" else x.astype(np.float32)
    with torch.no_grad():
        ref_out = ref(torch.from_numpy(x).float())[0]
    assert_close(ours(x)[0], ref_out)
    assert len(calls) == (2 if gathered else 0)  # the first layer's two directions, one chunk each


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_workspace_kept_between_calls(mode, batch_first, rng):
    """Each thread keeps one workspace per layer kind for the next call of the same shape: layers
    of one kind share it one after another, and a new shape (or the old one again) gets the right
    answer, as do new weights. Batch-first, the first layer's input goes through the workspace's
    input buffer too, and the next layer (of the same kind) reads the first one's output."""
    from lucid_tvm import runtime

    ref, ours = torch_twin(mode, 12, 12, num_layers=3, bidirectional=True, batch_first=batch_first)
    for steps, batch in [(5, 3), (40, 1), (5, 3), (5, 2), (300, 2)]:
        x = rng.standard_normal((batch, steps, 12) if batch_first else (steps, batch, 12)).astype(np.float32)
        with torch.no_grad():
            assert_close(ours(x)[0], ref(torch.from_numpy(x))[0])
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(0.5)
    ours.load_state_dict(ref.state_dict())
    runtime.release_workspaces()
    with torch.no_grad():
        assert_close(ours(x)[0], ref(torch.from_numpy(x))[0])


def test_one_plan_per_batch_serves_every_length(rng):
    """Sequences of varying length with one batch size share a plan (its workspace grows to the
    longest chunk, the variants learned are kept) and each gets the right answer, from the
    initial states it was given (loaded into the workspace after it grew)."""
    from lucid_tvm import runtime
    from lucid_tvm.schedule import chunk_steps

    ref, ours = torch_twin("LSTM", 6, 10, bidirectional=True)
    kernel = ours.layers[0]._kernel()
    chunk = chunk_steps(10**6, 1, kernel.row_bytes)  # one row per step
    plans = []
    # Growing from 3 steps, a shorter chunk in a larger workspace, and lengths with a last chunk
    # of 1 and of 44 steps.
    for steps in (3, chunk + 44, 7, chunk + 1, 1, chunk + 44):
        x = rng.standard_normal((steps, 1, 6)).astype(np.float32)
        h0, c0 = rng.standard_normal((2, 2, 1, 10)).astype(np.float32)
        output, (h_n, c_n) = ours(x, (h0, c0))
        with torch.no_grad():
            ref_output, (ref_h_n, ref_c_n) = ref(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
        for mine, theirs in ((output, ref_output), (h_n, ref_h_n), (c_n, ref_c_n)):
            assert_close(mine, theirs)
        plans.append(runtime._plans.__dict__[kernel.identity])
    assert all(plan is plans[0] for plan in plans)
    assert plans[0].capacity == chunk
    x = rng.standard_normal((5, 2, 6)).astype(np.float32)  # another batch size: its own plan
    with torch.no_grad():
        assert_close(ours(x)[0], ref(torch.from_numpy(x))[0])
    assert runtime._plans.__dict__[kernel.identity].batch == 2


def test_variant_choices_outlive_a_plan_of_another_batch(rng):
    """A layer kind alternating batch sizes remakes its plan each time, but keeps what its timing
    trials learned for each batch (and each projection's row count) rather than starting over."""
    from lucid_tvm import runtime

    ref, ours = torch_twin("GRU", 6, 10)
    kernel = ours.layers[0]._kernel()
    seen = {}
    for batch in (1, 3, 1, 3):
        x = rng.standard_normal((5, batch, 6)).astype(np.float32)
        with torch.no_grad():
            assert_close(ours(x)[0], ref(torch.from_numpy(x))[0])
        plan = runtime._plans.__dict__[kernel.identity]
        assert plan.batch == batch
        choices = (plan.run_chunk, plan.views[5][0])
        assert seen.setdefault(batch, choices) == choices
    assert seen[1][0] is not seen[3][0]


def test_stacked_layers_return_new_outputs(rng):
    """The layers before the last write into buffers that each thread keeps for its next call
    (``runtime.between_layers``); what a call returns is still its own, untouched by later calls."""
    ref, ours = torch_twin("GRU", 6, 9, num_layers=3)
    xs = [rng.standard_normal((7, 2, 6)).astype(np.float32) for _ in range(3)]
    outputs = [ours(x) for x in xs]
    for x, (y, h_n) in zip(xs, outputs):
        with torch.no_grad():
            ref_y, ref_h = ref(torch.from_numpy(x))
        assert_close(y, ref_y)
        assert_close(h_n, ref_h)


def test_between_layers_buffer_is_kept_per_thread_up_to_a_bound():
    import threading

    from lucid_tvm import runtime, schedule

    f32 = np.dtype(np.float32)
    runtime.release_workspaces()
    kept = runtime.between_layers((3, 2, 4), f32)
    again = runtime.between_layers((3, 2, 4), f32)
    assert again.shape == (3, 2, 4) and np.shares_memory(again, kept)
    assert np.shares_memory(runtime.between_layers((2, 2, 4), f32), kept)  # a smaller call: a view
    others = []
    thread = threading.Thread(target=lambda: others.append(runtime.between_layers((3, 2, 4), f32)))
    thread.start()
    thread.join()
    assert not np.shares_memory(others[0], kept)
    assert runtime.between_layers((3, 2, 4), np.dtype(np.float64)).dtype == np.float64
    kept = runtime.between_layers((5, 2, 4), f32)
    runtime.release_workspaces()
    assert not np.shares_memory(runtime.between_layers((5, 2, 4), f32), kept)
    # One larger than the bound is the caller's alone: kept, it would hold its memory after the call.
    kept = runtime.between_layers((5, 2, 4), f32)
    large = (schedule.STACK_CHUNK_BYTES // 16 + 1, 2, 2)
    assert not np.shares_memory(runtime.between_layers(large, f32), runtime.between_layers(large, f32))
    assert np.shares_memory(runtime.between_layers((5, 2, 4), f32), kept)


@pytest.mark.parametrize("mode", ["RNN_TANH", "LSTM", "GRU"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_stacks_run_chunk_by_chunk_as_torch(rng, monkeypatch, mode, batch_first):
    """A unidirectional stack runs a chunk of steps at a time through all its layers, each layer
    starting where its last chunk ended. With the smallest bound, a chunk is one of the kernel's
    own (1024 rows at this size, 128 steps of batch 8): 340 steps take 128, 128 and 84."""
    from lucid_tvm import schedule

    monkeypatch.setattr(schedule, "STACK_CHUNK_BYTES", 1)
    ref, ours = torch_twin(mode, 5, 6, num_layers=3, batch_first=batch_first)
    ours.train()  # dropout 0: the same answers, through the training branch
    x = rng.standard_normal((8, 340, 5) if batch_first else (340, 8, 5)).astype(np.float32)
    h0 = rng.standard_normal((3, 8, 6)).astype(np.float32)
    hx = (h0, -h0) if mode == "LSTM" else h0
    calls = []
    run = type(ours.layers[0]).run_sequence
    monkeypatch.setattr(type(ours.layers[0]), "run_sequence",
                        lambda cell, x, *args: calls.append(x.shape[0]) or run(cell, x, *args))
    ours_out = ours(x, hx)
    with torch.no_grad():
        ref_out = ref(torch.from_numpy(x), tuple(map(torch.from_numpy, hx)) if mode == "LSTM" else torch.from_numpy(h0))
    assert_close(ours_out[0], ref_out[0])
    for ours_state, ref_state in zip(ours_out[1] if mode == "LSTM" else [ours_out[1]],
                                     ref_out[1] if mode == "LSTM" else [ref_out[1]]):
        assert_close(ours_state, ref_state)
    assert calls == [128] * 6 + [84] * 3


def test_stack_memory_does_not_grow_with_the_sequence():
    """Beyond its output, a unidirectional stack's call allocates one chunk that a layer hands the
    next (and the kernels' workspace), whatever the length: at 16 x 64 a step's output is 4 KiB,
    so 4000 steps would hold 16 MiB per layer between layers where the chunk holds 4 MiB."""
    import tracemalloc

    from lucid_tvm import runtime

    layer = torch_twin("GRU", 8, 64, num_layers=3)[1]
    extra = []
    for steps in (2000, 4000):
        x = np.ones((steps, 16, 8), np.float32)
        runtime.release_workspaces()
        tracemalloc.start()
        try:
            output = layer(x)[0].numpy()
            extra.append(tracemalloc.get_traced_memory()[1] - output.nbytes)
        finally:
            tracemalloc.stop()
    assert extra[1] - extra[0] < 2**20, extra


def test_dropout_only_in_training(rng):
    ref, ours = torch_twin("LSTM", I, H, num_layers=3, dropout=1.0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    # Eval: no dropout, same as torch.
    with torch.no_grad():
        assert_close(ours(x)[0], ref(torch.from_numpy(x))[0])
    # Training with p = 1: layers 2 and 3 see zeros, deterministically, in both libraries.
    ours.train()
    ref.train()
    with torch.no_grad():
        assert_close(ours(x)[0], ref(torch.from_numpy(x))[0])


def test_dropout_keeps_nan_as_torch(rng):
    """torch multiplies a dropped value by 0, so a dropped NaN or inf is NaN, without a warning:
    with p = 1 a NaN in one batch row's input, and an inf in another's that relu passes on, reach
    the layer above in both libraries (made 0, they did not; multiplied by numpy, inf * 0 warned)."""
    ref, ours = torch_twin("RNN_RELU", I, H, num_layers=2, dropout=1.0)  # relu passes an inf on
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    x[1, 0, 0] = np.nan
    x[2, 1, 0] = np.inf
    ours.train()
    ref.train()
    with torch.no_grad():
        expected = ref(torch.from_numpy(x))[0].numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inf * 0 is NaN silently, as in torch
        got = ours(x)[0].numpy()
    assert np.isnan(expected[1:, 0]).all() and np.isnan(expected[2:, 1]).all()
    assert_close(got, torch.from_numpy(expected))  # NaN where torch's is NaN


def test_dropout_is_seedable_and_scaled(rng):
    import lucid_tvm

    _, ours = torch_twin("GRU", I, H, num_layers=2, dropout=0.5)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    ours.train()
    lucid_tvm.seed(7)
    first = ours(x)[0].numpy()
    lucid_tvm.seed(7)
    again = ours(x)[0].numpy()
    np.testing.assert_array_equal(first, again)
    ours.eval()
    assert not np.allclose(ours(x)[0].numpy(), first)


def _faster_on_a_fake_clock(monkeypatch, cost):
    """A runtime._Faster over one variant per key of ``cost``; each call of a variant records its
    key in ``ran`` and advances a fake clock by its cost (which the test may change)."""
    from lucid_tvm import runtime

    clock = [0.0]
    monkeypatch.setattr(runtime.time, "perf_counter", lambda: clock[0])
    ran = []

    def variant(key):
        def run(*args):
            ran.append(key)
            clock[0] += cost[key]
        return run

    return runtime._Faster(tuple(variant(key) for key in cost)), ran


def test_faster_variant_is_kept_and_the_other_retried(monkeypatch):
    """runtime._Faster: the first variant runs until a trial of the other one (two calls, after 16)
    measures faster; a trial that loses doubles the gap before the next one (up to 256)."""
    cost = {"first": 10.0, "second": 1.0}
    faster, ran = _faster_on_a_fake_clock(monkeypatch, cost)
    for _ in range(128):
        faster(1, "args")
    assert ran[:15] == ["first"] * 15 and ran[15:17] == ["second"] * 2  # the trial wins: switch
    # The trials of "first" lose: 16, then 32 calls after each (and 64 after the second).
    assert [i + 1 for i, name in enumerate(ran) if i >= 17 and name == "first"] == [33, 34, 66, 67]
    cost["first"] = 0.5  # the machine changed: the next trial (calls 131-132) switches back
    for _ in range(128):
        faster(1, "args")
    assert ran[128:130] == ["second"] * 2 and ran[130:132] == ["first"] * 2 and faster.current == 0
    assert [i + 1 for i, name in enumerate(ran) if i >= 132 and name == "second"] == [148, 149, 181, 182, 246, 247]


def test_faster_tries_every_variant_in_turn(monkeypatch):
    """With three variants each trial runs the next one after the current, so the fastest is found
    even when the second is slower than the first."""
    faster, ran = _faster_on_a_fake_clock(monkeypatch, {0: 10.0, 1: 20.0, 2: 1.0})
    for _ in range(80):
        faster(1, "args")
    # calls 16-17 try variant 1 (slower: the gap doubles), calls 49-50 variant 2 (faster: switch)
    assert ran[15:17] == [1, 1] and ran[48:50] == [2, 2] and set(ran[:48]) - {1} == {0}
    assert faster.current == 2 and ran[50:] == [2] * 15 + [0, 0] + [2] * 13  # then tries variant 0


def test_faster_counts_the_fastest_call_of_each_side(monkeypatch):
    """One slow call (a neighbour taking the core) on either side does not decide a trial."""
    cost = {"first": 10.0, "second": 8.0}
    faster, ran = _faster_on_a_fake_clock(monkeypatch, cost)
    for _ in range(15):
        faster(1, "args")
    cost["second"] = 30.0  # the trial's first call is slow, its second is not
    faster(1, "args")
    cost["second"] = 8.0
    faster(1, "args")
    assert ran[15:17] == ["second"] * 2 and faster.current == 1


# Batch 1 (each task's blocks in pairs), batch 6 (one full tile of LSTM's 6 rows, GRU's 8 left as
# tiles of 4 and 2); 70 steps are 2 chunks at LSTM 96's batch 6, so the second starts from the
# state the last one ended on; both directions.
@pytest.mark.parametrize("mode, hidden, batch", [("LSTM", 96, 6), ("GRU", 160, 1), ("RNN_TANH", 64, 6)])
def test_hidden_split_takes_its_first_step_from_project_first(mode, hidden, batch, rng):
    """The hidden split's chunks start with ``project_first``, which computes each chunk's first
    step's h @ W_hh^T beside the projection, and ``recur_parallel`` skips it: the same numbers, bit
    for bit, as the one-thread recurrence that computes every step itself."""
    from lucid_tvm import runtime

    ref, ours = torch_twin(mode, hidden + 3, hidden, bidirectional=True)
    x = rng.standard_normal((70, batch, hidden + 3)).astype(np.float32)
    kernel = ours.layers[0]._kernel()
    calls = []
    project_first = kernel.functions["project_first"]
    runtime.release_workspaces()
    runtime._choices.__dict__.clear()  # runners made from here on call the counting project_first
    try:
        kernel.functions["project_first"] = lambda *args: calls.append(args) or project_first(*args)
        answers = {}
        for name in ("recur", "recur_parallel"):
            ours(x)  # makes the plan and its choice of runners
            runners = runtime._plans.__dict__[kernel.identity].run_chunk
            runners.current = next(i for i, runner in enumerate(runners.variants) if runner.name == name)
            runners.countdown = math.inf
            calls.clear()
            answers[name] = ours(x)[0].numpy()
            chunks = len(runtime._plans.__dict__[kernel.identity].chunks(70, False))
            assert len(calls) == (2 * chunks if name == "recur_parallel" else 0)  # both directions
    finally:
        kernel.functions["project_first"] = project_first
        runtime.release_workspaces()
        runtime._choices.__dict__.clear()
    np.testing.assert_array_equal(answers["recur_parallel"], answers["recur"])
    with torch.no_grad():
        assert_close(answers["recur"], ref(torch.from_numpy(x))[0])


# GRU 40 and 33: 3 blocks, so the hidden split's two tasks own 1 and 2; LSTM 12: one block, one task.
# GRU 40 and 33 run each step's tiles before its gate math (their W_hh fits in L1; GRU 40 at batch 1 on
# one thread as one loop over its 3 blocks, kernels.recurrent's blocks_row), LSTM 128 and RNN 256
# block by block (schedule.tiles_first). LSTM 128 (8 blocks, the 2 rows of its last tile) and RNN 256
# (4 blocks, the 5th row) read the blocks at the ends of the hidden split's ranges in pieces, the last
# first, on odd steps (schedule.pieces), in every variant. At batch 1 the hidden split reads blocks in
# pairs where their accumulators fit (AVX-512; one at a time on AVX2), each task's first and last unit
# turned, the one thread block by block: LSTM 150 (3 pieces, 5 blocks a task) has a pair turned, a
# pair not, and a block alone, turned. (The shapes named are AVX-512's: lanes of 16, tiles of 6-8 rows.)
# Batch-first, the first layer projects rows that gather copied (GRU 33: the batch split; LSTM 12: the
# recurrence that projects as it goes). RNN 160 has blocks of 2 vectors (5 blocks, tiles of 8 rows:
# the batch split's parts take a full tile and the 9th row), which pad it less than 4 would.
@pytest.mark.parametrize("mode, hidden, batch, batch_first", [
    ("LSTM", 128, 8, False), ("LSTM", 150, 1, False), ("GRU", 40, 1, False), ("RNN_TANH", 256, 5, False),
    ("GRU", 33, 21, False), ("RNN_RELU", 64, 30, False), ("LSTM", 12, 3, False), ("GRU", 33, 21, True),
    ("LSTM", 12, 3, True), ("RNN_TANH", 160, 9, False)])
def test_variants_give_identical_answers(mode, hidden, batch, batch_first, rng):
    """One thread, all split by hidden blocks or all split by batch rows, or one thread while
    another core projects: the same numbers, bit for bit, for every variant of the projection and
    the recurrence the runtime may choose."""
    ref, ours = torch_twin(mode, hidden, hidden, num_layers=2, bidirectional=True, batch_first=batch_first)
    # 31 steps: every shape here has a chunk of odd length, whose final state each part copies back.
    x = rng.standard_normal((batch, 31, hidden) if batch_first else (31, batch, hidden)).astype(np.float32)
    _every_variant_gives_one_answer(ours, x, ref)


def _every_variant_gives_one_answer(ours, x, ref):
    """``ours(x)`` the same, bit for bit, whichever projection and recurrence variants of its first
    layer run, and ``ref``'s (torch's) within tolerance."""
    from lucid_tvm import runtime

    first = ours(x)[0].numpy()
    kernel = ours.layers[0]._kernel()
    plan = runtime._plans.__dict__[kernel.identity]
    runners = plan.run_chunk
    # The batch split is offered from 4 rows (below 8 rows a tile), else from one full tile; with
    # several cores and small steps, the recurrence that projects as it goes.
    rows, cores, batch, hidden = kernel.schedule["rows"], kernel.schedule["cores"], plan.batch, ours.hidden_size
    splits_batch = batch >= (4 if rows < 8 else rows) and cores > 1
    small_steps = batch * kernel.spec.num_gates * hidden ** 2 < kernel.schedule["parallel_step_macs"]
    assert {runner.name for runner in runners.variants} == (
        {"recur", "recur_parallel"} | ({"recur_batch_parallel"} if splits_batch else set())
        | ({"recur_projecting"} if cores > 1 and small_steps else set()))
    # Each projection variant under a recurrence that calls it (the one-thread one: the hidden split
    # runs project_first instead), then each way to run a chunk.
    runners.current = next(i for i, runner in enumerate(runners.variants) if runner.name == "recur")
    runners.countdown = math.inf
    for chosen in [project for project, _, _ in plan.views.values()] + [runners]:
        for index in range(len(chosen.variants)):
            chosen.current, chosen.countdown = index, math.inf  # this variant on every call
            np.testing.assert_array_equal(ours(x)[0].numpy(), first)
    with torch.no_grad():
        assert_close(first, ref(torch.from_numpy(x))[0])


# AVX2's 16 registers give tiles of fewer rows (schedule.default_schedule): LSTM 2 (the rest of a
# batch of 7: one row, k split in two), GRU 4 (21 rows: 5 tiles and one row), RNN 6 with blocks of 2
# vectors; and the hidden split's batch-1 step reads its blocks one at a time, not in pairs (LSTM
# 152: 19 blocks, pieces turned on odd steps). Compiled for x86-64-v3 (AVX2, FMA), which any such
# CPU runs, so that a machine with AVX-512 checks them too.
@pytest.mark.parametrize("mode, hidden, batch", [
    ("LSTM", 136, 7), ("LSTM", 152, 1), ("GRU", 35, 21), ("RNN_TANH", 168, 9)])
def test_avx2_kernels_give_every_variant_one_answer(mode, hidden, batch, rng, tmp_path, monkeypatch):
    import lucid_tvm
    from lucid_tvm import runtime
    from lucid_tvm.artifact import _cpu_flags

    if not {"avx2", "fma"} <= set(_cpu_flags() or ()):
        pytest.skip("needs an x86 CPU with AVX2 and FMA")
    monkeypatch.setattr(runtime, "_registry", dict(runtime._registry))  # the loaded kernels: this test's only
    ref, ours = torch_twin(mode, hidden, hidden)
    x = rng.standard_normal((31, batch, hidden)).astype(np.float32)
    target = "llvm -mcpu=x86-64-v3 -num-cores=2"
    try:
        loaded = lucid_tvm.load(lucid_tvm.export(ours, tmp_path / "avx2", target=target, example_input=x))
        assert loaded.layers[0]._kernel().schedule["rows"] == {"LSTM": 2, "GRU": 4, "RNN_TANH": 6}[mode]
        _every_variant_gives_one_answer(loaded, x, ref)
    finally:
        runtime.layer_kernel.cache_clear()  # kernel objects of this test's registry


@pytest.mark.parametrize("mode", ["RNN_TANH", "LSTM", "GRU"])
def test_repeated_calls_of_one_layer_skip_the_full_call_and_see_every_change(rng, monkeypatch, mode):
    """A one-layer module called again with no hx on an input the kernels read in place runs its
    kernel with the least Python (``rnn._OneLayerCalls``), not through the full call: the same
    answers, after a weight write, for another length, after the workspaces were released and on
    another thread. Any input it does not take, and a batch_first switched on, get the full call."""
    import pickle
    import threading

    import lucid_tvm
    from lucid_tvm import runtime

    ref, ours = torch_twin(mode, 6, 10)
    spare_ref, spare = torch_twin(mode, 6, 10)
    full = []
    run_sequence = type(ours.layers[0]).run_sequence
    monkeypatch.setattr(type(ours.layers[0]), "run_sequence", lambda cell, *a: full.append(1) or run_sequence(cell, *a))

    def check(x, expect_full, hx=None):
        full.clear()
        out, state = ours(x, hx)
        with torch.no_grad():
            given = None if hx is None else tuple(map(torch.from_numpy, hx)) if mode == "LSTM" else torch.from_numpy(hx)
            values = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            ref_out, ref_state = ref(torch.from_numpy(values.astype(np.float32)), given)
        assert_close(out, ref_out)
        for mine, theirs in zip(state if mode == "LSTM" else [state], ref_state if mode == "LSTM" else [ref_state]):
            assert_close(mine, theirs)
        assert bool(full) == expect_full

    x = rng.standard_normal((7, 3, 6)).astype(np.float32)
    check(x, True)
    check(x, False)
    check(rng.standard_normal((12, 3, 6)).astype(np.float32), False)  # another length
    check(lucid_tvm.Tensor(x), False)
    with torch.no_grad():
        ref.weight_hh_l0.mul_(-0.5)
    ours.load_state_dict(ref.state_dict())
    check(x, True)
    check(x, False)
    wide = rng.standard_normal((7, 3, 12)).astype(np.float32)
    read_only = x.copy()
    read_only.flags.writeable = False
    h0 = rng.standard_normal((1, 3, 10)).astype(np.float32)
    for other in (x.astype(np.float64), wide[:, :, ::2], read_only, x[:, 0], torch.from_numpy(x)):
        check(other, True)
    check(x, True, (h0, -h0) if mode == "LSTM" else h0)
    ours.batch_first = ref.batch_first = True
    check(x, True)
    ours.batch_first = ref.batch_first = False
    ours.layers, ref = spare.layers, spare_ref  # layers made earlier: no parameter written since
    check(x, True)
    check(x, False)
    runtime.release_workspaces()
    check(x, False)
    assert runtime._plans.__dict__[ours.layers[0]._kernel().identity].batch == 3  # the kernel bound anew
    results = []
    thread = threading.Thread(target=lambda: results.append(ours(x)))
    thread.start()
    thread.join()
    with torch.no_grad():
        assert_close(results[0][0], ref(torch.from_numpy(x))[0])
    check(x, False)
    # A module pickled before modules kept such calls has none in its state.
    state = pickle.loads(pickle.dumps(ours)).__dict__
    state.pop("_one_layer_calls", None)
    ours = object.__new__(type(ours))
    ours.__dict__.update(state)
    check(x, True)
    check(x, False)


def test_an_empty_batch_looks_no_kernel_up(monkeypatch):
    """A batch of 0 has nothing to compute: its empty outputs come without compiling or packing."""
    from lucid_tvm.nn import rnn

    layer = nn.GRU(13, 29)
    monkeypatch.setattr(rnn.GRUCell, "_kernel", lambda self: pytest.fail("a kernel was looked up"))
    y, h = layer(np.zeros((4, 0, 13), np.float32))
    assert y.shape == (4, 0, 29) and h.shape == (1, 0, 29)
