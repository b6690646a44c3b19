"""The main job: compile lucid.nn recurrent layers for this CPU, run them, check them against a
numpy reference, and time them."""

import os
import statistics
import sys
import time
from pathlib import Path

# OpenBLAS's threads (under the numpy reference) keep spinning for a while after each matmul, and
# a parallel step waits at its barrier for the core they hold: the next layer's medians came out
# up to 15x slower. As in bench.py, they go idle after 2^20 cycles. Set before numpy loads.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import lucid_tvm as lucid  # noqa: E402
import lucid_tvm.nn as nn  # noqa: E402
from lucid_tvm.build import host_target  # noqa: E402
from numpy_reference import run_stack  # noqa: E402

LAYERS = [
    ("RNN(tanh)", lambda: nn.RNN(128, 256, num_layers=2), "RNN_TANH"),
    ("RNN(relu)", lambda: nn.RNN(128, 256, nonlinearity="relu"), "RNN_RELU"),
    ("LSTM", lambda: nn.LSTM(128, 256, num_layers=2), "LSTM"),
    ("GRU", lambda: nn.GRU(128, 256), "GRU"),
]


def main():
    print(f"lucid_tvm {lucid.__version__}, target {host_target()}")
    lucid.seed(0)
    x = lucid.randn(50, 4, 128)  # (seq_len, batch, input_size)
    print(f"input {x.shape}; max abs error against numpy, median time of 20 calls")
    for name, make, mode in LAYERS:
        start = time.perf_counter()
        layer = make().eval()
        out = layer(x)[0]  # first call compiles (or loads from the kernel cache)
        first = time.perf_counter() - start
        weights = {}  # layers.{k}.weight_ih -> weight_ih_l{k}, the reference's (PyTorch's) names
        for key, value in layer.state_dict().items():
            _, index, param = key.split(".")
            weights[f"{param}_l{index}"] = value
        expected = run_stack(mode, x.numpy().astype(np.float64),
                             {k: v.astype(np.float64) for k, v in weights.items()}, layer.num_layers)
        error = np.abs(out.numpy() - expected).max()
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            layer(x)
            times.append(time.perf_counter() - t0)
        print(f"  {name:10s} layers={layer.num_layers} out {out.shape}  max|err| {error:.1e}  "
              f"{statistics.median(times) * 1e3:7.3f} ms/call  (first call {first:.2f} s)")
        if error > 2e-5:
            sys.exit(f"{name}: disagrees with the numpy reference ({error:.2e})")


if __name__ == "__main__":
    main()
