"""The lucid.nn layers on torch CUDA tensors: the GPU kernels (``runtime.CudaLayerKernel``) read and
write torch's memory through DLPack, without copies, and launch on torch's current stream.
Outputs are torch CUDA tensors on the input's device.

Shapes and states follow the CPU path of :mod:`.rnn` (PyTorch semantics); only the buffers differ.
"""

import math

import numpy as np
import tvm_ffi

from ..kernels.spec import MAX_ELEMENTS
from ..runtime import ALIGNMENT, cuda_layer_kernel
from ..tensor import Tensor, numpy_dtype
from . import checks

KDL_CUDA = 2  # DLPack device type of CUDA memory


def on_cuda(value):
    """Whether ``value`` is a CUDA tensor (by its DLPack device)."""
    if isinstance(value, (np.ndarray, Tensor)):  # host memory; asking DLPack costs 0.2 us a call
        return False
    device = getattr(value, "__dlpack_device__", None)
    try:
        return device is not None and device()[0] == KDL_CUDA
    except Exception:  # noqa: BLE001 - not a DLPack tensor after all
        return False


def _torch_tensor(value, what, dtype):
    import torch

    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{what}: the GPU path takes torch CUDA tensors, got {type(value).__name__}")
    if not value.is_cuda:
        raise TypeError(f"{what}: expected a CUDA tensor like the input, got a tensor on {value.device}")
    expected = getattr(torch, dtype.name)
    if value.dtype != expected:
        raise TypeError(f"{what}: expected dtype {expected} (the layer's), got {value.dtype}")
    return value.detach()


def _states(owner, hx, is_lstm, shape, batched, like):
    """(h0, c0) as (L*D, B, H) CUDA tensors; c0 None unless LSTM."""
    import torch

    names = ("h_0", "c_0") if is_lstm else ("hx",)
    if hx is None:
        values = (None,) * len(names)
    elif is_lstm:
        values = checks.lstm_states(owner, hx)
    else:
        values = (hx,)
    states = []
    for name, value in zip(names, values):
        if value is None:
            states.append(torch.zeros(shape, dtype=like.dtype, device=like.device))
            continue
        state = _torch_tensor(value, f"{owner} {name}", numpy_dtype(like.dtype))
        expected = shape if batched else (shape[0], shape[2])
        if tuple(state.shape) != expected:
            raise ValueError(f"{owner}: expected {name} of shape {expected}, got {tuple(state.shape)}")
        states.append(state.reshape(shape))
    return states[0], (states[1] if is_lstm else None)


def _aligned(tensor):
    """``tensor`` C-contiguous at a 64-byte aligned address (TVM's DLPack import requires it; a
    view into a larger tensor may start anywhere), copied only when it is not."""
    tensor = tensor.contiguous()
    return tensor if tensor.data_ptr() % ALIGNMENT == 0 else tensor.clone()


def run_layers(cells, x, h0, c0, directions, dropout, training, owner=None):
    """Run ``cells`` (layer-major, ``directions`` per layer) over ``x`` (T, B, I), a CUDA
    tensor (the tests also drive it with CPU tensors). Returns (output (T, B, D*H), h_n, c_n or
    None). ``owner`` names the layer in errors (by default the cells' class)."""
    import torch

    owner = owner or type(cells[0]).__name__
    x = _aligned(x)
    if not x.is_cuda:
        return _run_layers(owner, cells, x, h0, c0, directions, dropout, training)
    # TVM launches on the current CUDA device and the stream of the FFI context: torch's.
    with torch.cuda.device(x.device), tvm_ffi.use_torch_stream():
        return _run_layers(owner, cells, x, h0, c0, directions, dropout, training)


def _steps_per_call(owner, steps, batch, widths, itemsize):
    """How many steps of a sequence one kernel call takes: all of them, unless an array of so
    many would outgrow the kernels' 32-bit indices (``MAX_ELEMENTS`` values), where a chunk
    does. ``widths``: the values per step and batch row of the arrays of a call: the first
    layer's input, the output (every later layer's input too) and the projected input. A chunk's
    input and output are views of the whole sequence's, so a chunk is a whole number of steps
    that keeps them 64-byte aligned (TVM's DLPack import requires it)."""
    if steps * batch * max(widths) <= MAX_ELEMENTS:
        return steps
    most = MAX_ELEMENTS // (batch * max(widths))
    aligned = math.lcm(*(ALIGNMENT // math.gcd(ALIGNMENT, batch * width * itemsize) for width in widths[:2]))
    if most < aligned:
        raise ValueError(f"{owner}: one step of a batch of {batch} takes {batch * max(widths)} values, too many for "
                         f"the kernels' 32-bit indices ({MAX_ELEMENTS} values an array) in {aligned} steps; "
                         "split the batch")
    return most // aligned * aligned


def _run_layers(owner, cells, x, h0, c0, directions, dropout, training):
    import torch

    steps, batch = x.shape[0], x.shape[1]
    hidden, dtype = cells[0].hidden_size, cells[0].dtype
    is_lstm = cells[0].mode == "LSTM"
    h_n, c_n = torch.empty_like(h0), (torch.empty_like(c0) if is_lstm else None)
    if batch == 0:  # empty outputs, as torch's; no kernel launched on an empty grid
        return torch.empty((steps, 0, directions * hidden), dtype=x.dtype, device=x.device), h_n, c_n
    kernels = [cuda_layer_kernel(cell.mode, cell.input_size, hidden, dtype, x.device.index or 0) for cell in cells]
    width = directions * hidden
    chunk = _steps_per_call(owner, steps, batch,
                            (x.shape[2], width, kernels[0].packed_width), x.element_size())
    layer_input = x
    num_layers = len(cells) // directions
    for layer in range(num_layers):
        y = torch.empty((steps, batch, width), dtype=x.dtype, device=x.device)
        for direction in range(directions):
            index = layer * directions + direction
            cell, kernel = cells[index], kernels[index]
            hs = torch.empty((2, batch, hidden), dtype=x.dtype, device=x.device)
            hs[0] = h0[index]
            cs = c0[index].clone() if is_lstm else None
            xp = torch.empty((min(chunk, steps) * batch, kernel.packed_width), dtype=x.dtype, device=x.device)
            hp = torch.empty((batch, kernel.packed_width), dtype=x.dtype, device=x.device)
            # A long sequence a chunk at a time (the reverse direction from the last), the state
            # carried in hs and cs: each chunk's input and output are views of the whole.
            starts = range(0, steps, chunk)
            for t0 in reversed(starts) if direction == 1 else starts:
                t1 = min(t0 + chunk, steps)
                kernel.run(cell._packed_weights(kernel), layer_input[t0:t1], hs, cs, y[t0:t1], direction * hidden,
                           direction == 1, xp[:(t1 - t0) * batch], hp)
            h_n[index] = hs[0]
            if is_lstm:
                c_n[index] = cs
        if training and dropout > 0 and layer < num_layers - 1:
            y = torch.nn.functional.dropout(y, dropout, training=True)
        layer_input = y
    return layer_input, h_n, c_n


def sequence_forward(module, input, hx):
    """``RNNBase.forward`` on a torch CUDA tensor."""
    owner = type(module).__name__
    x = _torch_tensor(input, f"{owner} input", module.dtype)
    batched = checks.sequence_input(owner, x.shape, module.input_size, module.batch_first)
    x = x.unsqueeze(1) if not batched else (x.transpose(0, 1) if module.batch_first else x)
    stack = module.num_layers * module.num_directions
    h0, c0 = _states(owner, hx, module.is_lstm, (stack, x.shape[1], module.hidden_size), batched, x)
    output, h_n, c_n = run_layers(list(module.layers), x, h0, c0,
                                  module.num_directions, module.dropout, module.training, owner)
    if not batched:
        output, h_n = output[:, 0], h_n[:, 0]
        c_n = c_n[:, 0] if module.is_lstm else None
    elif module.batch_first:
        output = output.transpose(0, 1)
    return (output, (h_n, c_n)) if module.is_lstm else (output, h_n)


def cell_forward(cell, input, hx):
    """``RNNCell`` / ``LSTMCell`` / ``GRUCell`` forward on a torch CUDA tensor: a sequence of one step."""
    owner = type(cell).__name__
    x = _torch_tensor(input, f"{owner} input", cell.dtype)
    batched, batch = checks.cell_input(owner, x.shape, cell.input_size)
    # A cell's state is (B, H) batched and (H,) unbatched: one layer of a (1, B, H) stack.
    shape = (batch, cell.hidden_size) if batched else (cell.hidden_size,)

    def as_stack(value, name):
        if value is None:
            return None
        state = _torch_tensor(value, f"{owner} {name}", cell.dtype)
        if tuple(state.shape) != shape:
            raise ValueError(f"{owner}: expected {name} of shape {shape}, got {tuple(state.shape)}")
        return state.reshape(1, batch, cell.hidden_size)

    if hx is not None and cell.is_lstm:
        h0, c0 = checks.lstm_states(owner, hx)
        hx = (as_stack(h0, "h_0"), as_stack(c0, "c_0"))
    elif hx is not None:
        hx = as_stack(hx, "hx")
    h0, c0 = _states(owner, hx, cell.is_lstm, (1, batch, cell.hidden_size), True, x)
    _, h_n, c_n = run_layers([cell], x.reshape(1, batch, cell.input_size),
                             h0, c0, 1, 0.0, False, owner)
    return (h_n.reshape(shape), c_n.reshape(shape)) if cell.is_lstm else h_n.reshape(shape)
