"""What one compiled layer-direction computes: its mode, sizes and dtype (no TVM needed)."""

from dataclasses import dataclass

MODES = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")
NUM_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
# The kernels' shapes and offsets are 32-bit integers: no array a kernel call takes may hold more
# values than this. Past it their indices wrap around and a call reads and writes out of bounds.
MAX_ELEMENTS = 2**31 - 1


@dataclass(frozen=True)
class LayerSpec:
    mode: str
    input_size: int
    hidden_size: int
    dtype: str

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown recurrent mode {self.mode!r}; expected one of {MODES}")

    @property
    def num_gates(self):
        return NUM_GATES[self.mode]
