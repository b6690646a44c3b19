"""Sequence layers side by side: lucid_tvm, the numpy loop, torch (oneDNN) and ONNX Runtime.

Same weights and inputs for all; answers checked against torch; repetitions interleaved (one call
of each implementation per round, in turn) and medians reported, so machine noise hits all alike.

    python scripts/bench.py                # the design notes' table
    python scripts/bench.py --reps 50 --threads 2
"""

import argparse
import io
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

# Thread pools that spin after a call steal the 2 cores from whichever library runs next in the
# interleaved rounds; make every pool go idle quickly (OpenBLAS under numpy and torch's OpenMP
# here, ORT's below). Must be set before the libraries load.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")  # 2^20 cycles: hot within a call, idle within the pause
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import lucid_tvm.nn as nn  # noqa: E402
from numpy_reference import run_stack  # noqa: E402

# (mode, hidden = input size, batch, steps): the table of the design notes.
CASES = [
    ("LSTM", 256, 1, 150),
    ("LSTM", 512, 4, 25),
    ("LSTM", 512, 64, 25),
    ("GRU", 256, 1, 150),
    ("GRU", 1024, 16, 25),
    ("RNN_TANH", 512, 4, 25),
]
# Idle thread pools (OpenBLAS under numpy, TVM's, ORT's) keep spinning for a while after a call;
# on 2 cores that would slow whichever library runs next, so each call starts after a pause.
PAUSE = 0.02
TORCH = {"RNN_TANH": torch.nn.RNN, "RNN_RELU": torch.nn.RNN, "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}


def make_torch(mode, hidden):
    kwargs = {"nonlinearity": "relu" if mode == "RNN_RELU" else "tanh"} if mode.startswith("RNN") else {}
    return TORCH[mode](hidden, hidden, **kwargs).eval()


def make_ort(module, x, threads):
    import onnxruntime as ort

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter is deprecated, and the only one for RNNs
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(x),), buffer, input_names=["x"], dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"x": x})[0]


def bench_case(mode, hidden, batch, steps, reps, threads):
    torch.manual_seed(0)
    ref = make_torch(mode, hidden)
    ours = nn.RNNBase(mode, hidden, hidden).eval()
    ours.load_state_dict(ref.state_dict())
    x = np.random.default_rng(0).standard_normal((steps, batch, hidden)).astype(np.float32)
    weights = {k: v.numpy() for k, v in ref.state_dict().items()}
    tx = torch.from_numpy(x)

    def run_torch():
        with torch.no_grad():
            return ref(tx)[0]

    impls = {
        "lucid_tvm": lambda: ours(x)[0],
        "numpy": lambda: run_stack(mode, x, weights, 1),
        "torch": run_torch,
        "onnxruntime": make_ort(ref, x, threads),
    }
    expected = run_torch().numpy()
    errors = {name: float(np.abs(np.asarray(fn()) - expected).max()) for name, fn in impls.items()}
    times = {name: [] for name in impls}
    for _ in range(reps):
        for name, fn in impls.items():
            time.sleep(PAUSE)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}, errors


STEPS_PER_BLOCK = 20
# (layer, in_features, out_features, batch): tracetorch one-step calls.
TRACETORCH_CASES = [
    ("LSTM", 64, 128, 32),
    ("LSTM", 512, 512, 64),
    ("GRU", 512, 512, 64),
    ("SimpleRNN", 256, 256, 16),
]


def bench_tracetorch_case(kind, in_features, out_features, batch, reps):
    """Median us per call of (forward, forward+backward) for tracetorch and lucid_tvm.tracetorch."""
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

    with torch.no_grad():
        error = float((ours(x) - ref(x)).abs().max())
    impls = {("tracetorch", "fwd"): forward(ref), ("lucid_tvm", "fwd"): forward(ours),
             ("tracetorch", "fwd+bwd"): forward_backward(ref), ("lucid_tvm", "fwd+bwd"): forward_backward(ours)}
    for fn in impls.values():
        fn()  # warm up: compile, allocate
    # A recurrent layer is called step after step: time blocks of consecutive calls (steady state),
    # interleaving the blocks of the implementations.
    times = {key: [] for key in impls}
    for _ in range(reps):
        for key, fn in impls.items():
            time.sleep(PAUSE)
            start = time.perf_counter()
            for _ in range(STEPS_PER_BLOCK):
                fn()
            times[key].append((time.perf_counter() - start) / STEPS_PER_BLOCK)
    return {key: statistics.median(t) * 1e6 for key, t in times.items()}, error


def print_tracetorch_table(reps):
    print(f"\ntracetorch layers, median us per one-step call, blocks of {STEPS_PER_BLOCK} calls in {reps} interleaved rounds")
    header = f"{'layer':9s} {'in':>4s} {'out':>4s} {'B':>3s} | {'tracetorch':>10s} {'lucid_tvm':>9s} {'speedup':>7s} " \
             f"| {'tracetorch':>10s} {'lucid_tvm':>9s} {'speedup':>7s} | {'max err':>8s}"
    print(f"{'':24s} | {'forward':^29s} | {'forward + backward':^29s} |")
    print(header)
    print("-" * len(header))
    for kind, in_features, out_features, batch in TRACETORCH_CASES:
        us, error = bench_tracetorch_case(kind, in_features, out_features, batch, reps)
        row = f"{kind:9s} {in_features:4d} {out_features:4d} {batch:3d}"
        for mode in ("fwd", "fwd+bwd"):
            ref, ours = us[("tracetorch", mode)], us[("lucid_tvm", mode)]
            row += f" | {ref:10.1f} {ours:9.1f} {ref / ours:6.2f}x"
        print(row + f" | {error:8.1e}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--only", choices=["sequence", "tracetorch"], help="run one of the two tables")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.only != "tracetorch":
        print_sequence_table(args.reps, args.threads)
    if args.only != "sequence":
        print_tracetorch_table(args.reps)


def print_sequence_table(reps, threads):
    print(f"float32, input size = hidden size, median ms of {reps} interleaved rounds; "
          f"max |error| against torch in the last column")
    header = f"{'cell':9s} {'H':>5s} {'B':>3s} {'T':>4s} | {'lucid_tvm':>9s} {'numpy':>8s} {'torch':>8s} " \
             f"{'ORT':>8s} | {'vs numpy':>8s} {'vs best peer':>12s} | {'max err':>8s}"
    print(header)
    print("-" * len(header))
    for mode, hidden, batch, steps in CASES:
        ms, errors = bench_case(mode, hidden, batch, steps, reps, threads)
        best_peer = min(ms["torch"], ms["onnxruntime"])
        print(f"{mode:9s} {hidden:5d} {batch:3d} {steps:4d} | {ms['lucid_tvm']:9.3f} {ms['numpy']:8.3f} "
              f"{ms['torch']:8.3f} {ms['onnxruntime']:8.3f} | {ms['numpy'] / ms['lucid_tvm']:7.2f}x "
              f"{best_peer / ms['lucid_tvm']:11.2f}x | {max(errors.values()):8.1e}", flush=True)


if __name__ == "__main__":
    main()
