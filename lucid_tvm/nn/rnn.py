"""lucid.nn recurrent layers (lucid 2.x API, PyTorch semantics) on compiled TVM kernels.

These classes hold parameters and check arguments; every number is computed by the compiled
kernels (``lucid_tvm.runtime``). A cell is a sequence of length one, so cells and sequence
modules run the same kernels.
"""

import math
import numbers
import re
import warnings

import numpy as np

from .. import schedule
from ..kernels.spec import MAX_ELEMENTS, MODES, NUM_GATES
from ..runtime import between_layers, contiguous, in_place, layer_kernel, registry_generation
from ..tensor import Tensor, generator, to_numpy
from . import checks, gpu
from .activation import ReLU, Tanh
from .module import Module, ModuleList, Parameter

_NONLINEARITIES = {"tanh": Tanh, "relu": ReLU}


def _kernel_rows(x, dtype):
    """Steps of a sequence (T, B, I) as the layer kernels read them: time-major rows in place,
    and a batch-first array seen time-major too (the kernel copies it a chunk at a time);
    anything else copied, time-major."""
    return x if in_place(x, dtype) or in_place(x.transpose(1, 0, 2), dtype) else contiguous(x, dtype)


def _steps_per_call(owner, cell, steps, batch, width, directions):
    """How many steps of a sequence one kernel call may take: all of them, unless the input or
    the output of so many would hold more values than the kernels' 32-bit indices reach
    (``MAX_ELEMENTS``). A unidirectional module then runs the sequence a chunk of steps at a
    time. Refused: a step whose arrays are too large alone (and, on preparing the layer, its
    packed weights), and a bidirectional module's too long sequence (its reverse direction
    starts at the last step). ``cell``: the first layer's."""
    if batch == 0:  # nothing to compute, no kernel to look up
        return steps
    cell._current()
    if batch > cell._most_rows:
        raise ValueError(f"{owner}: one step of a batch of {batch} outgrows the kernels' 32-bit indices "
                         f"({MAX_ELEMENTS} values an array) at more than {cell._most_rows} rows; split the batch")
    inputs = max(cell.input_size, width)  # the first layer's input, the others'
    if steps * batch * inputs <= MAX_ELEMENTS:
        return steps
    if directions == 2:
        advice = (f"split the batch into parts of at most {MAX_ELEMENTS // (steps * inputs)}"
                  if steps * inputs <= MAX_ELEMENTS else
                  f"it runs at most {MAX_ELEMENTS // inputs} steps of one sequence (the GPU path runs more, in chunks)")
        raise ValueError(f"{owner}: a bidirectional module runs its whole sequence in one kernel call, and "
                         f"{steps} steps of a batch of {batch} take {steps * batch * inputs} values, more than the "
                         f"kernels' 32-bit indices reach ({MAX_ELEMENTS}); {advice}")
    return MAX_ELEMENTS // (batch * inputs)


def _check_size(owner, name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be at least {minimum}, got {value}")
    return int(value)


def _check_nonlinearity(owner, nonlinearity):
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(f"{owner}: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return nonlinearity


class _Cell(Module):
    """Parameters and the compiled step shared by RNNCell, LSTMCell and GRUCell."""

    mode = None  # set by each subclass (RNNCell: per instance)

    # The compiled kernel and the weights packed for it, looked up on the first call: they belong
    # to this process, so ``copy`` and ``pickle`` leave them out (``__getstate__``).
    _COMPILED = ("_packed", "_packed_key", "_prepared", "_prepared_at", "_most_rows")

    def __init__(self, input_size, hidden_size, bias=True):
        super().__init__()
        name = type(self).__name__
        self.input_size = _check_size(name, "input_size", input_size)
        self.hidden_size = _check_size(name, "hidden_size", hidden_size)
        self.bias = bool(bias)
        gates = NUM_GATES[self.mode] * self.hidden_size
        bound = 1.0 / math.sqrt(self.hidden_size)

        def uniform(*shape):
            return Parameter(generator().uniform(-bound, bound, shape).astype(np.float32))

        self.weight_ih = uniform(gates, self.input_size)
        self.weight_hh = uniform(gates, self.hidden_size)
        self.bias_ih = uniform(gates) if self.bias else None
        self.bias_hh = uniform(gates) if self.bias else None
        self.__dict__.update(dict.fromkeys(self._COMPILED))

    def __getstate__(self):
        return {**self.__dict__, **dict.fromkeys(self._COMPILED)}

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")

    @property
    def dtype(self):
        return self._parameters["weight_ih"].data.dtype  # not self.weight_ih: __getattr__ is slow

    @property
    def is_lstm(self):
        return self.mode == "LSTM"

    def _kernel(self):
        """The layer kernel for this cell's sizes and dtype (``run_sequence`` keeps it between calls)."""
        dtype = self._parameters["weight_ih"].data.dtype
        return layer_kernel(self.mode, self.input_size, self.hidden_size, dtype.name)

    def _packed_weights(self, kernel):
        p = self._parameters
        w_ih, w_hh, b_ih, b_hh = p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh")
        # Parameters are compared by identity and version (their arrays are read-only). Written
        # out rather than with a generator: this runs on every call of a small layer.
        key = (kernel, w_ih, w_ih.version, w_hh, w_hh.version, b_ih, b_hh,
               None if b_ih is None else b_ih.version, None if b_hh is None else b_hh.version)
        if key != self._packed_key:  # new parameters, new data or a new kernel: repack
            self._check_parameters()
            self._packed = kernel.pack(w_ih.data, w_hh.data, None if b_ih is None else b_ih.data,
                                       None if b_hh is None else b_hh.data)
            self._packed_key = key
        return self._packed

    def _check_parameters(self):
        """``param.data = array`` takes any shape, and an assigned Parameter any dtype; a wrong
        shape, or a dtype other than ``weight_ih``'s (the kernel's), is caught here, before packing."""
        gates = NUM_GATES[self.mode] * self.hidden_size
        expected = {"weight_ih": (gates, self.input_size), "weight_hh": (gates, self.hidden_size),
                    "bias_ih": (gates,), "bias_hh": (gates,)}
        owner = f"{type(self).__name__}({self.input_size}, {self.hidden_size})"
        for name, shape in expected.items():
            param = self._parameters.get(name)
            if param is None:  # bias=False
                continue
            if param.data.shape != shape:
                raise ValueError(f"{owner}: expected {name} of shape {shape}, got {param.data.shape}")
            if param.data.dtype != self.dtype:
                raise TypeError(f"{owner}: {name} is {param.data.dtype} where weight_ih is {self.dtype}; "
                                f"a cell's parameters share one dtype (cast them together with .to())")

    def run_sequence(self, x, h0, c0, y, yoff=0, reverse=False, hn=None, cn=None):
        """Run over ``x`` (T, B, I); see :meth:`lucid_tvm.runtime.LayerKernel.run`. A batch of 0
        has nothing to compute: its outputs are empty."""
        if x.shape[1] == 0:
            return
        kernel, packed = self._current(x.dtype)
        kernel.run(packed, x, h0, c0, y, yoff, reverse, hn, cn)

    def _current(self, input_dtype=None):
        """``(kernel, packed weights)`` as the parameters are now, looked up again only after a
        parameter write anywhere or a kernel registration (two integers to compare on every call
        of a small layer). ``input_dtype``: that of the input from the layer before, checked then."""
        now = (Parameter.writes, registry_generation())
        if self._prepared_at != now:
            if input_dtype is not None and input_dtype != self.dtype:  # one parameter write made it so
                raise TypeError(f"{type(self).__name__}({self.input_size}, {self.hidden_size}): its parameters "
                                f"are {self.dtype} but its input is {input_dtype} from the layer before; the layers "
                                f"of a module share one dtype (cast the module with .to(), .float() or .double())")
            kernel = self._kernel()
            # The kernels' arrays within their 32-bit indices: the packed weights (checked before
            # packing them), and how many rows a step may have: its input and both directions'
            # output, its projection, the state.
            row = kernel.row_values  # packed gates of all units
            if max(self.input_size, self.hidden_size) * row > MAX_ELEMENTS:
                raise ValueError(f"{type(self).__name__}({self.input_size}, {self.hidden_size}): its packed weights, "
                                 f"{max(self.input_size, self.hidden_size)} x {row} values, outgrow the kernels' "
                                 f"32-bit indices ({MAX_ELEMENTS} values an array)")
            self._most_rows = MAX_ELEMENTS // max(self.input_size, 2 * self.hidden_size, row)
            self._prepared, self._prepared_at = (kernel, self._packed_weights(kernel)), now
        return self._prepared

    def _state(self, value, name, batch, batched):
        owner = type(self).__name__
        if value is None:
            return None  # zeros
        state = to_numpy(value, f"{owner} {name}")
        expected = (batch, self.hidden_size) if batched else (self.hidden_size,)
        if state.shape != expected:
            raise ValueError(f"{owner}: expected {name} of shape {expected} for "
                             f"{'batched 2-D' if batched else 'unbatched 1-D'} input, got {state.shape}")
        return state.reshape(batch, self.hidden_size)

    def forward(self, input, hx=None):
        if gpu.on_cuda(input):  # torch CUDA tensors in and out, on the GPU kernels
            return gpu.cell_forward(self, input, hx)
        owner = type(self).__name__
        x = to_numpy(input, f"{owner} input")
        batched, batch = checks.cell_input(owner, x.shape, self.input_size)
        if self.is_lstm:
            hx = checks.lstm_states(owner, hx)
            h0, c0 = (self._state(v, n, batch, batched) for v, n in zip(hx, ("h_0", "c_0")))
        else:
            h0, c0 = self._state(hx, "hx", batch, batched), None
        _steps_per_call(owner, self, 1, batch, self.hidden_size, 1)
        y = np.empty((1, batch, self.hidden_size), self.dtype)
        cn = np.empty((batch, self.hidden_size), self.dtype) if self.is_lstm else None
        self.run_sequence(contiguous(x.reshape(1, batch, self.input_size), self.dtype), h0, c0, y, cn=cn)
        shape = (batch, self.hidden_size) if batched else (self.hidden_size,)
        h = Tensor._wrap(y.reshape(shape))
        return (h, Tensor._wrap(cn.reshape(shape))) if self.is_lstm else h


class RNNCell(_Cell):
    """``h' = nonlinearity(x W_ih^T + b_ih + h W_hh^T + b_hh)``; ``nonlinearity`` is a Tanh or ReLU module."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh"):
        _check_nonlinearity(type(self).__name__, nonlinearity)
        self.mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        super().__init__(input_size, hidden_size, bias)
        self.nonlinearity = _NONLINEARITIES[nonlinearity]()

    def extra_repr(self):
        return super().extra_repr() + (", nonlinearity='relu'" if self.mode == "RNN_RELU" else "")


class LSTMCell(_Cell):
    """Gates i, f, g, o; takes and returns ``(h, c)``."""

    mode = "LSTM"


class GRUCell(_Cell):
    """Gates r, z, n with ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) n + z h``."""

    mode = "GRU"


def _plain_array(input):
    """The numpy array of an input that is one as it is (a numpy array or a Tensor), else None."""
    return input.data if type(input) is Tensor else input if type(input) is np.ndarray else None


class _OneLayerCalls:
    """Calls of a one-layer, one-direction module with no ``hx``, on time-major, batched inputs that
    the kernels read in place, made with the least Python: check the input's shape, allocate the
    outputs, run the kernel (``LayerKernel.run``, on this thread's workspace) and wrap the outputs.
    Skipping the checks and the planning of a full call took LSTM 32/1/200 from 22.7 to 20.4 us a
    call, and from 8.0 to 5.4 at one step (docs/design.md): it is for a small layer called again
    and again. A full call that could have been one of these makes it (``RNNBase.forward``), and
    it stands for no other: it returns None for any input it does not take (for ``forward`` to
    check and run in full), and after a parameter write, a submodule assignment or a kernel
    registration. It holds nothing the cell does not (its kernel and packed weights)."""

    def __init__(self, cell):
        self.stamp = cell._prepared_at
        self.kernel, self.packed = cell._prepared  # as of ``stamp``
        self.dtype, self.input_size, self.hidden, self.is_lstm = (cell.dtype, cell.input_size, cell.hidden_size,
                                                                  cell.is_lstm)
        # A call whose input, output, step's projection or state would outgrow the kernels' indices
        # is not one of these (``forward`` runs it in chunks or refuses it): the cell's bound.
        self.widest, self.most_rows = max(self.input_size, self.hidden), cell._most_rows

    def __call__(self, x):
        if not (x.ndim == 3 and x.shape[2] == self.input_size and in_place(x, self.dtype)  # (no empty array)
                and x.shape[1] <= self.most_rows and x.shape[0] * x.shape[1] * self.widest <= MAX_ELEMENTS
                and (Parameter.writes, registry_generation()) == self.stamp):
            return None
        steps, batch, _ = x.shape
        output = np.empty((steps, batch, self.hidden), self.dtype)
        h_n = np.empty((1, batch, self.hidden), self.dtype)
        c_n = np.empty_like(h_n) if self.is_lstm else None
        self.kernel.run(self.packed, x, None, None, output, 0, False, h_n[0], None if c_n is None else c_n[0])
        state = Tensor._wrap(h_n)
        return Tensor._wrap(output), (state, Tensor._wrap(c_n)) if self.is_lstm else state


_FLAT_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh)_l(0|[1-9]\d*)(_reverse)?$")


class RNNBase(Module):
    """A stack of recurrent layers run over whole sequences, lucid 2.x ``RNNBase``.

    ``layers`` holds one cell per layer and direction (layer-major: layer 0 forward, layer 0
    reverse, layer 1 forward, ...). Each layer-direction runs as compiled code with the time loop
    inside; between layers, dropout in training mode only.
    """

    # Made by the first call that could be one (see forward). A class default: a module pickled
    # before there was one has none in its state.
    _one_layer_calls = None

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False):
        super().__init__()
        name = type(self).__name__
        if mode not in MODES:
            raise ValueError(f"{name}: mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.nonlinearity = "relu" if mode == "RNN_RELU" else "tanh"
        self.input_size = _check_size(name, "input_size", input_size)
        self.hidden_size = _check_size(name, "hidden_size", hidden_size)
        self.num_layers = _check_size(name, "num_layers", num_layers)
        for flag, value in (("bias", bias), ("batch_first", batch_first)):  # as torch checks them
            if not isinstance(value, bool):
                raise TypeError(f"{name}: {flag} must be a bool, got {type(value).__name__} {value!r}")
        self.bias, self.batch_first = bias, batch_first
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
            raise TypeError(f"{name}: dropout must be a number in [0, 1], got {type(dropout).__name__}")
        if not 0 <= dropout <= 1:
            raise ValueError(f"{name}: dropout must be a number in [0, 1], got {dropout!r}")
        self.dropout = float(dropout)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(f"{name}: dropout={self.dropout} has no effect with num_layers=1 "
                          "(it applies between layers)", stacklevel=2)
        self.bidirectional = bool(bidirectional)
        self.is_lstm = mode == "LSTM"
        directions = 2 if self.bidirectional else 1
        cells = []
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else self.hidden_size * directions
            for _ in range(directions):
                if mode == "LSTM":
                    cells.append(LSTMCell(layer_input, self.hidden_size, self.bias))
                elif mode == "GRU":
                    cells.append(GRUCell(layer_input, self.hidden_size, self.bias))
                else:
                    cells.append(RNNCell(layer_input, self.hidden_size, self.bias, self.nonlinearity))
        self.layers = ModuleList(cells)

    def __getstate__(self):
        return {**self.__dict__, "_one_layer_calls": None}  # this process's kernel (see _Cell)

    def flatten_parameters(self):
        """Nothing to do: torch's packs its weights for cuDNN here; these pack theirs for their
        kernels on the first call after a change. (Kept so that torch code calling it runs.)"""

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def dtype(self):
        return self.layers[0].dtype

    def extra_repr(self):
        options = [f"{self.input_size}, {self.hidden_size}"]
        if self.mode.startswith("RNN"):
            options.append(f"nonlinearity='{self.nonlinearity}'")
        for key, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                             ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, key) != default:
                options.append(f"{key}={getattr(self, key)}")
        return ", ".join(options)

    def _own_key(self, key):
        """Accept PyTorch's / lucid 3.x flat keys (``weight_ih_l0``, ``bias_hh_l1_reverse``)."""
        match = _FLAT_KEY.match(key)
        if match and (self.bidirectional or not match.group(3)):
            name, layer, reverse = match.group(1), int(match.group(2)), bool(match.group(3))
            return f"layers.{layer * self.num_directions + reverse}.{name}"
        return key

    def _initial_state(self, value, name, batch, batched):
        """``value`` as (num_layers * num_directions, batch, hidden_size), or None (zeros) for None."""
        if value is None:
            return None  # zeros
        owner, stack = type(self).__name__, self.num_layers * self.num_directions
        shape = (stack, batch, self.hidden_size)
        state = to_numpy(value, f"{owner} {name}")
        if not batched:
            if state.shape != (stack, self.hidden_size):
                raise ValueError(f"{owner}: for unbatched 2-D input expected {name} of shape "
                                 f"{(stack, self.hidden_size)}, got {state.shape}")
            return state.reshape(shape)
        if state.ndim == 2:
            if stack != 1:
                raise ValueError(
                    f"{owner}: a 2-D {name} is taken as (1, batch, hidden_size), which fits only one "
                    f"layer and direction; this module has num_layers * num_directions = {stack}, "
                    f"so expected {name} of shape {shape}, got {state.shape}")
            state = state[None]
        if state.shape != shape:
            raise ValueError(f"{owner}: expected {name} of shape (num_layers * num_directions, "
                             f"batch, hidden_size) = {shape}, got {state.shape}")
        return state

    def _dropout(self, y):
        """Inverted dropout, in place: keep each value with probability 1 - p and scale it by
        1 / (1 - p). Dropped values are multiplied by 0, as torch's are: a dropped inf or NaN
        is NaN."""
        scale = y.dtype.type(0.0 if self.dropout >= 1 else 1.0 / (1.0 - self.dropout))
        with np.errstate(invalid="ignore"):  # inf * 0, silently, as in torch
            y *= np.where(generator().random(y.shape) < self.dropout, y.dtype.type(0), scale)

    def forward(self, input, hx=None):
        calls = self._one_layer_calls
        if calls is not None and hx is None and not self.batch_first:
            x = _plain_array(input)
            outputs = None if x is None else calls(x)
            if outputs is not None:
                return outputs
        if gpu.on_cuda(input):  # torch CUDA tensors in and out, on the GPU kernels
            return gpu.sequence_forward(self, input, hx)
        owner = type(self).__name__
        x = to_numpy(input, f"{owner} input")
        batched = checks.sequence_input(owner, x.shape, self.input_size, self.batch_first)
        # The cells without ``self.layers`` (Module.__getattr__): half a microsecond per call.
        cells = tuple(self._modules["layers"]._modules.values())
        dtype, hidden, directions = cells[0].dtype, self.hidden_size, self.num_directions
        if not batched:
            x = x[:, None]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        steps, batch = x.shape[0], x.shape[1]
        if hx is None:
            h0 = c0 = None  # zeros
        elif self.is_lstm:
            h0, c0 = checks.lstm_states(owner, hx)
            h0 = self._initial_state(h0, "h_0", batch, batched)
            c0 = self._initial_state(c0, "c_0", batch, batched)
        else:
            h0, c0 = self._initial_state(hx, "hx", batch, batched), None

        width = directions * hidden
        chunk = _steps_per_call(owner, cells[0], steps, batch, width, directions)
        h_n = np.empty((self.num_layers * directions, batch, hidden), dtype)
        c_n = np.empty_like(h_n) if self.is_lstm else None
        output = np.empty((steps, batch, width), dtype)
        step_bytes = batch * width * dtype.itemsize
        # A unidirectional stack whose layers would hand on more than STACK_CHUNK_BYTES runs a
        # chunk of steps at a time through all of them. (A reverse direction starts at the last
        # step, so the layer above it needs all of the layer's output.)
        if directions == 1 and self.num_layers > 1 and steps * step_bytes > schedule.STACK_CHUNK_BYTES:
            chunk = min(chunk, schedule.stack_chunk_steps(steps, batch, cells[-1]._kernel().row_bytes, step_bytes))
        # The layers write alternately into the output and one buffer, the last into the output.
        between = between_layers((chunk, batch, width), dtype) if self.num_layers > 1 else None
        for t0 in range(0, steps, chunk):
            t1 = min(t0 + chunk, steps)
            layer_input = _kernel_rows(x[t0:t1], dtype)
            h_start, c_start = (h0, c0) if t0 == 0 else (h_n, c_n)  # then where the last chunk ended
            for layer in range(self.num_layers):
                y = output[t0:t1] if (self.num_layers - 1 - layer) % 2 == 0 else between[:t1 - t0]
                for direction in range(directions):
                    index = layer * directions + direction
                    cells[index].run_sequence(
                        layer_input, None if h_start is None else h_start[index],
                        None if c_start is None else c_start[index], y, direction * hidden, direction == 1,
                        h_n[index], None if c_n is None else c_n[index])
                if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                    self._dropout(y)
                layer_input = y

        if (hx is None and batched and not self.batch_first and len(cells) == 1 and batch > 0
                and _plain_array(input) is not None and in_place(x, dtype)):
            if calls is None or calls.stamp != cells[0]._prepared_at:
                self._one_layer_calls = _OneLayerCalls(cells[0])
        if not batched:
            output, h_n = output[:, 0], h_n[:, 0]
            c_n = c_n[:, 0] if self.is_lstm else None
        elif self.batch_first:
            output = output.transpose(1, 0, 2)
        if self.is_lstm:
            return Tensor._wrap(output), (Tensor._wrap(h_n), Tensor._wrap(c_n))
        return Tensor._wrap(output), Tensor._wrap(h_n)


class RNN(RNNBase):
    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False):
        _check_nonlinearity(type(self).__name__, nonlinearity)
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size,
                         hidden_size, num_layers, bias, batch_first, dropout, bidirectional)


class LSTM(RNNBase):
    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional)


class GRU(RNNBase):
    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional)
