"""Sequence layers side by side: lucid_tvm, the numpy loop, torch (oneDNN) and ONNX Runtime.

Same weights and inputs for all; answers checked against torch; repetitions interleaved (each
round gives every implementation of every case a turn: WARM_UP_SECONDS of untimed calls, then
CALLS_PER_TURN timed ones) and medians reported, so machine noise hits all alike.

    python scripts/bench.py                # the design notes' table, and the tracetorch layers
    python scripts/bench.py --full         # every mode, 1-2 layers, all shapes: docs/perf/cpu.{csv,png}, machine.json
    python scripts/bench.py --reps 50 --threads 2
    python scripts/bench.py --cuda         # the GPU kernels against torch's cuDNN layers (needs a GPU)
    python scripts/bench.py --shapes LSTM:1:150:150:8:50 RNN_TANH:2:40:128:32:100:bf   # any shapes, nothing written
"""

import argparse
import csv
import io
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
import warnings
from dataclasses import asdict
from pathlib import Path

# Thread pools that spin after a call steal the 2 cores from whichever library runs next in the
# interleaved rounds. OpenBLAS under numpy spins for 2^28 cycles by default: make it go idle
# quickly (must be set before numpy loads). torch keeps its default threading, as its users run
# it: its OpenMP threads spin between the parallel regions of a call (under OMP_WAIT_POLICY=PASSIVE,
# which this script set until 2026-11-23, torch's LSTM ran 1.3-8x slower) and go idle soon after
# it, before the next library's untimed calls are over (docs/perf/README.md). ONNX Runtime runs
# both ways (``make_ort``). The tracetorch table runs in a child process without these settings
# (TORCH_DEFAULT_THREADING).
TORCH_DEFAULT_THREADING = "LUCID_TVM_BENCH_TORCH_DEFAULT_THREADING"
POOL_SETTINGS = {"OPENBLAS_THREAD_TIMEOUT": "20"}  # 2^20 cycles: hot within a call, idle soon after
SET_HERE = [] if os.environ.get(TORCH_DEFAULT_THREADING) else [k for k in POOL_SETTINGS if k not in os.environ]
os.environ.update({k: POOL_SETTINGS[k] for k in SET_HERE})
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import lucid_tvm.nn as nn  # noqa: E402
from lucid_tvm import runtime  # noqa: E402
from cases import DESIGN_CASES, EXTRA_CASES, FULL_CASES, parse_shape  # noqa: E402
from numpy_reference import run_stack  # noqa: E402


# Idle thread pools (OpenBLAS under numpy, TVM's, ORT's) keep spinning for a while after a call;
# on 2 cores that would slow whichever library runs next, so each call starts after a pause.
PAUSE = 0.02
# Each turn times a few consecutive calls after untimed ones: the steady state of a layer called
# again and again (serving, training), not the first call after another library evicted its
# weights and let its threads sleep (which costs every library here up to 2x, unevenly). The
# untimed calls also outlast the previous library's spinning threads.
CALLS_PER_TURN = 3
WARM_UP_SECONDS = 0.005


def warm_up(fn):
    """Call ``fn`` untimed for at least WARM_UP_SECONDS (and at least once)."""
    end = time.perf_counter() + WARM_UP_SECONDS
    fn()
    while time.perf_counter() < end:
        fn()
TORCH = {"RNN_TANH": torch.nn.RNN, "RNN_RELU": torch.nn.RNN, "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}


def make_torch(case):
    kwargs = {"nonlinearity": "relu" if case.mode == "RNN_RELU" else "tanh"} if case.mode.startswith("RNN") else {}
    return TORCH[case.mode](case.input_size, case.hidden, num_layers=case.layers, batch_first=case.batch_first,
                            **kwargs).eval()


def make_ort(module, x, threads, spinning):
    """An ONNX Runtime session of ``module`` on ``threads`` intra-op threads, its threads spinning
    while they wait for work (ORT's default) or not. Neither is faster everywhere (GRU 1024/1/25
    3.5 ms spinning against 9.7, LSTM 256/1/150 4.0 against 2.7), so the table times both."""
    import onnxruntime as ort

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter is deprecated, and the only one for RNNs
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(x),), buffer, input_names=["x"], dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"x": x})[0]


def lower_bound_ms(case, limits):
    """The least time this machine allows: per layer, the input projection at the FMA peak, plus
    per step the recurrent weights read from the cache levels that hold them, or the step's FMAs,
    whichever is longer. Each core keeps up to 3/4 of its own L2 of its slice (all of it when it
    fits, else the part the recurrence's back-and-forth block order leaves cached from the last
    step), the shared L3 up to 3/4 of itself of the rest, and DRAM the remainder."""
    gates = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}[case.mode]
    peak, bandwidth = limits["fma_peak_flops"], limits["bandwidth_bytes_per_s"]
    cores = limits["cores"]
    capacity = {"L2": 0.75 * cores * limits["l2_bytes_per_core"], "L3": 0.75 * limits["l3_bytes"],
                "DRAM": float("inf")}
    total = 0.0
    for layer in range(case.layers):
        inputs = case.input_size if layer == 0 else case.hidden
        projection = 2 * case.steps * case.batch * inputs * gates * case.hidden / peak
        left, read = 4 * gates * case.hidden * case.hidden, 0.0  # bytes of W_hh; seconds to read them
        for level in ("L2", "L3", "DRAM"):
            held = min(left, capacity[level])
            read, left = read + held / bandwidth[level], left - held
        step = max(read, 2 * case.batch * gates * case.hidden * case.hidden / peak)
        total += projection + case.steps * step
    return total * 1e3


def peak_call_mib(fn):
    """Peak memory allocated by one call (numpy buffers, which hold every lucid_tvm array),
    counting the workspace that calls of the same shape keep and reuse."""
    runtime.release_workspaces()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


# The most lucid_tvm's answers (output, h_n, c_n) may differ from torch's (the issue's accuracy
# target), and the peers' outputs (a wrong export or reference would make their times mean nothing).
TOLERANCE, PEER_TOLERANCE = 2e-5, 1e-4


def prepare_case(case, threads):
    """Every implementation of ``case`` as a call, their max errors against torch (lucid_tvm's
    over its output and final states; RuntimeError past the tolerances), and the peak memory of
    one lucid_tvm call."""
    torch.manual_seed(0)
    ref = make_torch(case)
    ours = nn.RNNBase(case.mode, case.input_size, case.hidden, num_layers=case.layers,
                      batch_first=case.batch_first).eval()
    ours.load_state_dict(ref.state_dict())
    shape = (case.batch, case.steps, case.input_size) if case.batch_first else (case.steps, case.batch, case.input_size)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    weights = {k: v.numpy() for k, v in ref.state_dict().items()}
    tx = torch.from_numpy(x)

    def run_torch():
        with torch.no_grad():
            return ref(tx)[0]

    def run_numpy():
        time_major = x.transpose(1, 0, 2) if case.batch_first else x
        out = run_stack(case.mode, np.ascontiguousarray(time_major), weights, case.layers)
        return out.transpose(1, 0, 2) if case.batch_first else out

    impls = {
        "lucid_tvm": lambda: ours(x)[0],
        "numpy": run_numpy,
        "torch": run_torch,
        "onnxruntime": make_ort(ref, x, threads, spinning=True),
        "onnxruntime_nospin": make_ort(ref, x, threads, spinning=False),
    }
    with torch.no_grad():
        expected_output, expected_states = ref(tx)
    expected = [expected_output, *(expected_states if case.mode == "LSTM" else (expected_states,))]
    output, states = ours(x)
    got = [output, *(states if case.mode == "LSTM" else (states,))]
    # lucid_tvm's error: its output and final states against torch's; the peers' outputs only.
    errors = {"lucid_tvm": max(float(np.abs(np.asarray(a) - b.numpy()).max()) for a, b in zip(got, expected))}
    errors.update({name: float(np.abs(np.asarray(fn()) - expected_output.numpy()).max())
                   for name, fn in impls.items() if name != "lucid_tvm"})
    for name, error in errors.items():  # a wrong answer is no result: refused before any timing
        tolerance = TOLERANCE if name == "lucid_tvm" else PEER_TOLERANCE
        if not error <= tolerance:
            raise RuntimeError(f"{case}: {name}'s answers differ from torch's by {error:.1e}, more than {tolerance:.0e}")
    memory = peak_call_mib(impls["lucid_tvm"])
    return impls, errors, memory


def time_cases(all_impls, reps, sample_limits):
    """Median ms per call of each implementation of each case, the same per round (a list, one
    median of its turn's calls per round), and the list of what ``sample_limits()`` returned at the
    start of each round. A round gives every implementation of every case a turn, so a burst of
    noise on this shared VM (it lasts seconds, and moved single cases 2x when all of a case's
    rounds ran back to back) hits a few rounds of each case rather than every round of one."""
    times = [{name: [] for name in impls} for impls in all_impls]
    samples = []
    for _ in range(reps):
        samples.append(sample_limits())
        for impls, case_times in zip(all_impls, times):
            for name, fn in impls.items():
                warm_up(fn)
                for _ in range(CALLS_PER_TURN):
                    start = time.perf_counter()
                    fn()
                    case_times[name].append(time.perf_counter() - start)
                if name in SPINS_AFTER:
                    time.sleep(SPIN_PAUSE)
    medians = [{name: statistics.median(t) * 1e3 for name, t in case_times.items()} for case_times in times]
    rounds = [{name: [statistics.median(t[i:i + CALLS_PER_TURN]) * 1e3 for i in range(0, len(t), CALLS_PER_TURN)]
               for name, t in case_times.items()} for case_times in times]
    return medians, rounds, samples


def round_speedups(rounds, best_peer):
    """The first and third quartiles of lucid_tvm's speedup over ``best_peer`` taken round by
    round (the peer's turn over lucid_tvm's in the same round, a few seconds apart): how far the
    machine's noise moves the speedup. Where 1.0x lies between them, a speedup on either side of
    it is within that noise. (Each round's fastest peer instead would bias them low: the least of
    three noisy times is below their medians' least.)"""
    ratios = [peer / ours for peer, ours in zip(rounds[best_peer], rounds["lucid_tvm"])]
    if len(ratios) < 2:
        return ratios[0], ratios[0]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return q1, q3


# Pools that go on spinning after the last call, past the next implementation's untimed calls,
# get a pause after their turn. ONNX Runtime's: lucid_tvm's GRU 1024/1/25 took 4.6 ms after a
# spinning ORT call and a 20 ms pause, 3.5 after its own; after a pause of 0.1 s or more, the same.
# lucid_tvm's own: TVM's worker spins (sched_yield) for about 110 ms after each parallel call
# (TVM_THREAD_POOL_SPIN_COUNT, 300000 by default). Without a pause, ORT without spinning took 10.0
# ms right after a GRU 512/1/25 turn against 1.1 after a pause, numpy 11.8 against 1.25, and in the
# table (which had no pause after lucid_tvm until 2026-11-24) spinning ORT's GRU 512/1/25 0.81-1.12
# ms against 0.56-0.61, LSTM 512/1/25 0.89-1.55 against 0.73-0.77 (docs/design.md, "Spinning").
SPINS_AFTER, SPIN_PAUSE = {"onnxruntime", "lucid_tvm"}, 0.2
# The implementations of ``prepare_case`` lucid_tvm is compared with; the best peer is the fastest.
PEERS = ("torch", "onnxruntime", "onnxruntime_nospin")
STEPS_PER_BLOCK = 20
# (layer, in_features, out_features, batch): tracetorch one-step calls.
TRACETORCH_CASES = [
    ("LSTM", 64, 128, 32),
    ("LSTM", 512, 512, 64),
    ("GRU", 512, 512, 64),
    ("SimpleRNN", 256, 256, 16),
]


# A training loop's iteration: this many steps forward (each output's squared mean added to the
# loss), the backward, an SGD step. Unlike the one-step calls, nothing pauses between its parts,
# so the face's kernels run between torch's parallel ops (the adds into .grad, the optimizer's).
TRAINING_STEPS = 20


def bench_tracetorch_case(kind, in_features, out_features, batch, reps):
    """Median us per call of (forward, forward+backward), and per iteration of a training loop
    ("train"), for tracetorch and lucid_tvm.tracetorch."""
    import tracetorch

    import lucid_tvm.tracetorch as ours_tt

    torch.manual_seed(0)
    ref = getattr(tracetorch.rnn, kind)(in_features, out_features)
    ours = getattr(ours_tt.rnn, kind)(in_features, out_features)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(batch, in_features)
    x_grad = x.clone().requires_grad_()

    def forward(layer):
        def run():
            with torch.no_grad():
                layer(x)
        return run

    def forward_backward(layer):
        def run():
            layer.detach_states()
            layer(x_grad).sum().backward()
        return run

    xs = torch.randn(TRAINING_STEPS, batch, in_features)

    def training(layer):
        optimizer = torch.optim.SGD(layer.parameters(), lr=1e-4)

        def run():
            layer.zero_states()
            loss = sum(layer(x_t).square().mean() for x_t in xs)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return run

    with torch.no_grad():
        error = float((ours(x) - ref(x)).abs().max())
    impls = {("tracetorch", "fwd"): forward(ref), ("lucid_tvm", "fwd"): forward(ours),
             ("tracetorch", "fwd+bwd"): forward_backward(ref), ("lucid_tvm", "fwd+bwd"): forward_backward(ours),
             ("tracetorch", "train"): training(ref), ("lucid_tvm", "train"): training(ours)}
    for fn in impls.values():
        fn()  # warm up: compile, allocate
    # A recurrent layer is called step after step: time blocks of consecutive calls (steady state),
    # interleaving the blocks of the implementations.
    times = {key: [] for key in impls}
    for _ in range(reps):
        for key, fn in impls.items():
            time.sleep(PAUSE)
            calls = 1 if key[1] == "train" else STEPS_PER_BLOCK
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[key].append((time.perf_counter() - start) / calls)
            if key[0] in SPINS_AFTER:  # our inference blocks' pool spins on into tracetorch's turn
                time.sleep(SPIN_PAUSE)
    return {key: statistics.median(t) * 1e6 for key, t in times.items()}, error


def print_tracetorch_table(reps, threads):
    """The tracetorch table, in a child process with torch's default threading unless this is it."""
    if SET_HERE:
        env = {k: v for k, v in os.environ.items() if k not in SET_HERE}
        subprocess.run([sys.executable, __file__, "--only", "tracetorch", "--reps", str(reps), "--threads", str(threads)],
                       env={**env, TORCH_DEFAULT_THREADING: "1"}, check=True)
        return
    print(f"\ntracetorch layers, median us per one-step call (blocks of {STEPS_PER_BLOCK} calls) and ms per training "
          f"iteration ({TRAINING_STEPS} steps, backward, SGD step), {reps} interleaved rounds; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    groups = {"fwd": ("forward, us", 1), "fwd+bwd": ("forward + backward, us", 1), "train": ("training loop, ms", 1e-3)}
    header = f"{'layer':9s} {'in':>4s} {'out':>4s} {'B':>3s}" + \
        f" | {'tracetorch':>10s} {'lucid_tvm':>9s} {'speedup':>7s}" * len(groups) + f" | {'max err':>8s}"
    print(f"{'':24s}" + "".join(f" | {title:^29s}" for title, _ in groups.values()) + " |")
    print(header)
    print("-" * len(header))
    for kind, in_features, out_features, batch in TRACETORCH_CASES:
        us, error = bench_tracetorch_case(kind, in_features, out_features, batch, reps)
        row = f"{kind:9s} {in_features:4d} {out_features:4d} {batch:3d}"
        for mode, (_, scale) in groups.items():
            ref, ours = us[("tracetorch", mode)], us[("lucid_tvm", mode)]
            row += f" | {ref * scale:10.1f} {ours * scale:9.1f} {ref / ours:6.2f}x"
        print(row + f" | {error:8.1e}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch and ONNX Runtime intra-op threads (lucid_tvm and numpy use every core)")
    parser.add_argument("--only", choices=["sequence", "tracetorch"], help="run one of the two tables")
    parser.add_argument("--full", action="store_true",
                        help="every mode, 1 and 2 layers, 7 shapes and a batch-first case (writes docs/perf/)")
    parser.add_argument("--extra", action="store_true",
                        help="shapes the list does not name: odd, tiny, long, I != H, 3 layers (docs/perf/cpu_extra.csv)")
    parser.add_argument("--shapes", nargs="+", type=parse_shape, metavar="MODE:L:I:H:B:T[:bf]",
                        help="only these sequence shapes (layers, input size, hidden size, batch, steps; "
                             "bf: batch-first), printed and not written")
    parser.add_argument("--cuda", action="store_true",
                        help="only the GPU table: lucid_tvm's CUDA kernels against torch (cuDNN)")
    args = parser.parse_args()
    for name in ("reps", "threads"):  # before any case runs, not after the first's setup
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    if args.cuda:
        print_cuda_table(FULL_CASES if args.full else DESIGN_CASES, args.reps)
        return
    if args.shapes:
        print_sequence_table(args.shapes, args.reps, args.threads)
        return
    if args.extra:
        write_results(*print_sequence_table(EXTRA_CASES, args.reps, args.threads), "cpu_extra", plot=False)
        return
    if args.only != "tracetorch":
        rows, limits = print_sequence_table(FULL_CASES if args.full else DESIGN_CASES, args.reps, args.threads)
        if args.full:
            write_results(rows, limits)
    if args.only != "sequence":
        print_tracetorch_table(args.reps, args.threads)


def print_sequence_table(cases, reps, threads):
    from machine_limits import Probe, median_limits

    # The limits are measured in every round, beside the layers: this VM's speed moves by 20-50%
    # between hours and can flip within a second (RNN_TANH 40->128/32/100 batch-first went from
    # 0.42 to 0.77 ms a call in one process and stayed there; its FMA peak measured 521, 463 and
    # 422 GFLOP/s on three occasions), so limits measured at another time say little about a run.
    probe = Probe()
    prepared = [prepare_case(case, threads) for case in cases]
    timed, rounds, samples = time_cases([p[0] for p in prepared], reps,
                                        lambda: probe.sample(fma_runs=5, read_runs=3))
    limits = probe.describe(median_limits(samples), f"scripts/bench.py: the median over its {reps} rounds of "
                                                    "scripts/machine_limits.py's kernels, the best of a few runs a round")
    print(f"float32, median ms of {reps} interleaved rounds x {CALLS_PER_TURN} calls. bound: this machine's lower bound "
          f"from its limits measured in the same rounds (scripts/machine_limits.py's kernels, medians: "
          f"{limits['fma_peak_flops'] / 1e9:.0f} GFLOP/s, L2 {limits['bandwidth_bytes_per_s']['L2'] / 1e9:.0f} GB/s); "
          f"rounds = the middle half of the speedups over the best peer taken round by round, which the "
          f"noise spreads; "
          f"of bound = bound / lucid_tvm; peak MiB = memory one lucid_tvm call allocates beyond the layer's weights "
          f"and packed weights; max err = lucid_tvm's largest difference from torch (output, h_n, c_n); "
          f"torch with its default "
          f"threading, ONNX Runtime (ORT) with its threads spinning (its default) and not (ORT ns)")
    header = (f"{'cell':9s} {'L':>1s} {'I':>4s} {'H':>4s} {'B':>3s} {'T':>4s} {'bf':>2s} | {'lucid_tvm':>9s} "
              f"{'numpy':>8s} {'torch':>8s} {'ORT':>8s} {'ORT ns':>8s} | {'vs best':>7s} {'rounds':>11s} | {'bound':>7s} {'of bound':>8s} | "
              f"{'peak MiB':>8s} {'max err':>8s}")
    print(header)
    print("-" * len(header))
    rows = []
    for case, (_, errors, memory), ms, case_rounds in zip(cases, prepared, timed, rounds):
        peer = min(PEERS, key=ms.get)
        best_peer = ms[peer]
        bound = lower_bound_ms(case, limits)
        q1, q3 = round_speedups(case_rounds, peer)
        row = {**asdict(case), **{f"{k}_ms": v for k, v in ms.items()}, "speedup_vs_best_peer": best_peer / ms["lucid_tvm"],
               "speedup_q1": q1, "speedup_q3": q3, "bound_ms": bound, "fraction_of_bound": bound / ms["lucid_tvm"],
               "peak_mib": memory, "max_err": errors["lucid_tvm"]}
        rows.append(row)
        print(f"{case.mode:9s} {case.layers:1d} {case.input_size:4d} {case.hidden:4d} {case.batch:3d} {case.steps:4d} "
              f"{'y' if case.batch_first else 'n':>2s} | {ms['lucid_tvm']:9.3f} {ms['numpy']:8.3f} {ms['torch']:8.3f} "
              f"{ms['onnxruntime']:8.3f} {ms['onnxruntime_nospin']:8.3f} | {row['speedup_vs_best_peer']:6.2f}x "
              f"{q1:5.2f}-{q3:4.2f}x | {bound:7.3f} {row['fraction_of_bound']:7.0%} | {memory:8.2f} {row['max_err']:8.1e}",
              flush=True)
    speedups = [r["speedup_vs_best_peer"] for r in rows]
    below = [r for r in rows if r["speedup_vs_best_peer"] < 1.0]
    print(f"geometric mean speedup over the best peer: {statistics.geometric_mean(speedups):.2f}x; "
          f"lowest {min(speedups):.2f}x; lowest fraction of bound {min(r['fraction_of_bound'] for r in rows):.0%}; "
          f"{len(below)} under 1.0x, {sum(r['speedup_q3'] >= 1.0 for r in below)} of them with 1.0x in their rounds' "
          f"middle half")
    return rows, limits


def write_results(rows, limits, name="cpu", plot=True):
    """docs/perf/{name}.csv, the limits its bounds come from (machine.json for the full table,
    machine_extra.json for the extra one) and the plot."""
    out = Path(__file__).resolve().parent.parent / "docs" / "perf"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    limits_file = out / ("machine.json" if name == "cpu" else f"machine_{name.removeprefix('cpu_')}.json")
    limits_file.write_text(json.dumps(limits, indent=2))
    if not plot:
        print(f"wrote {out / name}.csv and {limits_file}")
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['mode']} L{r['layers']} H{r['hidden']} B{r['batch']} T{r['steps']}" + (" bf" if r["batch_first"] else "")
              for r in rows]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(max(12, len(rows) * 0.3), 9), sharex=True)
    top.bar(range(len(rows)), [r["speedup_vs_best_peer"] for r in rows], color="tab:blue")
    top.axhline(1.0, color="black", linewidth=0.8)
    top.set_ylabel("speedup over best peer (torch, ORT)")
    bottom.bar(range(len(rows)), [100 * r["fraction_of_bound"] for r in rows], color="tab:green")
    bottom.axhline(75, color="black", linewidth=0.8, linestyle="--")
    bottom.set_ylabel("% of this machine's bound")
    bottom.set_xticks(range(len(rows)), labels, rotation=90, fontsize=7)
    figure.suptitle("lucid_tvm on CPU (scripts/bench.py --full)")
    figure.tight_layout()
    figure.savefig(out / f"{name}.png", dpi=110)
    print(f"wrote {out / name}.csv, {limits_file} and {out / name}.png")


def print_cuda_table(cases, reps):
    """Median ms per call on the GPU, lucid_tvm against torch (cuDNN), inputs and outputs torch
    CUDA tensors; each call timed between device synchronizations, calls interleaved."""
    from lucid_tvm.runtime import cuda_device_present

    if not (cuda_device_present() and torch.cuda.is_available()):
        print("--cuda: skipped, no CUDA device here (TVM's runtime or torch sees none)")
        return
    print(f"GPU: {torch.cuda.get_device_name()}, float32, median ms of {reps} interleaved calls")
    print("| cell | layers | H | B | T | lucid_tvm | torch cuDNN | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for case in cases:
        ref = make_torch(case).cuda()
        ours = nn.RNNBase(case.mode, case.input_size, case.hidden, num_layers=case.layers,
                          batch_first=case.batch_first).eval()
        ours.load_state_dict({k: v.cpu().numpy() for k, v in ref.state_dict().items()})
        shape = (case.batch, case.steps) if case.batch_first else (case.steps, case.batch)
        x = torch.randn(*shape, case.input_size, device="cuda")
        with torch.no_grad():
            diff = (ours(x)[0] - ref(x)[0]).abs().max().item()  # also compiles and warms up
        times = {"ours": [], "torch": []}
        for _ in range(reps):
            for name, fn in (("ours", ours), ("torch", ref)):
                torch.cuda.synchronize()
                start = time.perf_counter()
                with torch.no_grad():
                    fn(x)
                torch.cuda.synchronize()
                times[name].append((time.perf_counter() - start) * 1e3)
        print(f"| {case.mode} | {case.layers} | {case.hidden} | {case.batch} | {case.steps} | "
              f"{statistics.median(times['ours']):.3f} | {statistics.median(times['torch']):.3f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
