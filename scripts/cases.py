"""The shapes the CPU benchmark runs, and the ``MODE:L:I:H:B:T[:bf]`` form that names any other
(``scripts/bench.py``, ``scripts/call_parts.py``)."""

import argparse
from dataclasses import dataclass

from lucid_tvm.kernels.spec import MODES


@dataclass(frozen=True)
class Case:
    mode: str
    layers: int
    input_size: int
    hidden: int
    batch: int
    steps: int
    batch_first: bool = False


# The design notes' table (input size = hidden size, one layer).
DESIGN_CASES = [Case("LSTM", 1, 256, 256, 1, 150), Case("LSTM", 1, 512, 512, 4, 25),
                Case("LSTM", 1, 512, 512, 64, 25), Case("GRU", 1, 256, 256, 1, 150),
                Case("GRU", 1, 1024, 1024, 16, 25), Case("RNN_TANH", 1, 512, 512, 4, 25)]
# The full sweep: every mode, 1 and 2 layers, the (H, B, T) shapes, and one batch-first case.
SHAPES = [(256, 1, 150), (256, 16, 150), (512, 1, 25), (512, 4, 25), (512, 64, 25), (1024, 1, 25), (1024, 16, 25)]
FULL_CASES = [Case(mode, layers, h, h, b, t) for mode in MODES
              for layers in (1, 2) for h, b, t in SHAPES] + \
             [Case(mode, layers, 40, 128, 32, 100, True) for mode in MODES
              for layers in (1, 2)]
# Shapes the benchmark list does not name, to check nothing is tuned to it: odd sizes, tiny
# hidden sizes, long sequences, input size != hidden size, three layers.
EXTRA_CASES = [Case("LSTM", 1, 33, 33, 3, 50), Case("GRU", 1, 100, 100, 1, 100), Case("RNN_TANH", 1, 100, 100, 7, 64),
               Case("RNN_TANH", 1, 32, 32, 1, 200), Case("LSTM", 1, 32, 32, 1, 200), Case("GRU", 1, 64, 64, 1, 200),
               Case("LSTM", 1, 64, 64, 8, 100), Case("LSTM", 1, 256, 256, 1, 2000), Case("GRU", 1, 128, 128, 4, 1000),
               Case("GRU", 1, 300, 100, 4, 50), Case("LSTM", 1, 1024, 256, 1, 50), Case("LSTM", 3, 256, 256, 4, 50),
               Case("GRU", 3, 512, 512, 1, 25), Case("RNN_RELU", 2, 64, 200, 2, 300), Case("RNN_TANH", 1, 40, 40, 8, 100)]


def parse_shape(text):
    """A :class:`Case` from ``MODE:LAYERS:INPUT:HIDDEN:BATCH:STEPS``, ``:bf`` appended for batch-first."""
    fields = text.split(":")
    batch_first = fields[-1] == "bf"
    fields = fields[:-1] if batch_first else fields
    if len(fields) != 6 or fields[0] not in MODES:
        raise argparse.ArgumentTypeError(f"expected MODE:L:I:H:B:T[:bf] with MODE one of {', '.join(MODES)}, "
                                         f"got {text!r}")
    try:
        sizes = [int(v) for v in fields[1:]]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers in {text!r}") from None
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected sizes of at least 1 in {text!r}")
    return Case(fields[0], *sizes, batch_first)
