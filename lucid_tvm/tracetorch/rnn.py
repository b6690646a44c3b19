"""``tt.rnn``: SimpleRNN, LSTM and GRU with tracetorch 0.19.2's parameters, states and equations,
computed by compiled kernels, trainable through ``torch.autograd``."""

import numpy as np
import torch
from torch import nn

from ..tensor import numpy_dtype
from . import core
from ._step import SAVED_STATE, StepEngine


# Those the kernels are compiled for; not bfloat16, whose TVM 0.27 CPU kernels do not compile.
KERNEL_DTYPES = (torch.float16, torch.float32, torch.float64)


class Layer(core.Layer):
    """The superclass of the recurrent layers (tracetorch's ``tt.rnn.Layer``)."""


class _Step(torch.autograd.Function):
    """One compiled step; its backward runs the compiled backward kernels."""

    @staticmethod
    def forward(ctx, engine, x, h, c, *params):
        h_new, c_new, saved = engine.forward(x.numpy(), h.numpy(), None if c is None else c.numpy(),
                                             training=True)
        # The weights used, for the backward to use them too: the Linears may hold others by then.
        # (Their storage, as torch's saved tensors keep it: ``p.data = new`` swaps a Parameter's.)
        ctx.engine, ctx.saved, ctx.weights, ctx.has_cell = engine, saved, engine.weights_packed(), c is not None
        outputs = (torch.from_numpy(h_new),) if c is None else (torch.from_numpy(h_new), torch.from_numpy(c_new))
        # ``saved`` shares this tensor's memory: saved here too, autograd checks it for in-place
        # changes. So are the weights where tracetorch's F.linear saves them, where the Linear's
        # input requires grad (cat[H, x]; GRU's candidate also through r, from the gates' Linear),
        # so that a backward after an optimizer's step changed them is refused as there.
        needs = ctx.needs_input_grad  # of (engine, x, h, c, weight, bias[, weight, bias])
        weights = params[0::2]
        used = [weights[0]] if needs[1] or needs[2] else []
        if len(weights) > 1 and (needs[1] or needs[2] or needs[4] or needs[5]):
            used.append(weights[1])
        ctx.save_for_backward({"h": h, "c": c, "h_new": outputs[0]}[SAVED_STATE[engine.kind]], *used)
        return outputs if c is not None else outputs[0]

    @staticmethod
    def backward(ctx, dh, dc=None):
        if torch.is_grad_enabled():  # create_graph=True: the gradient's own graph is asked for
            raise NotImplementedError(f"tracetorch {ctx.engine.kind}: higher-order gradients (create_graph=True) "
                                      f"are not supported by the compiled layers")
        ctx.saved_tensors  # raises if the tensor saved in forward was changed in place since
        dc = None if dc is None else dc.contiguous().numpy()
        dx, dh_prev, dc_prev, weight_grads = ctx.engine.backward(ctx.saved, ctx.weights, dh.contiguous().numpy(), dc)
        # Views into the GEMMs' padded outputs, as they are: torch adds a strided gradient into
        # .grad as fast as a contiguous one (and copies the first into the layout .grad needs),
        # where a contiguous copy of each step's dW cost a pass over it.
        grads = [None, torch.from_numpy(dx), torch.from_numpy(dh_prev),
                 None if dc_prev is None else torch.from_numpy(dc_prev)]
        for dw, db in weight_grads:
            grads += [torch.from_numpy(dw), None if db is None else torch.from_numpy(db)]
        return tuple(grads)


def _array(tensor):
    """The numpy view of a tensor (detached first only where it requires grad: 0.3 us a call)."""
    return (tensor.detach() if tensor.requires_grad else tensor).numpy()


def _as_rows(tensor, width, dtype):
    """``tensor``, its features axis last, as (N, ``width``) rows of ``dtype``: itself where it is."""
    rows = tensor if tensor.ndim == 2 else tensor.reshape(-1, width)
    return rows if rows.dtype == dtype else rows.to(dtype)


class _CompiledLayer(Layer):
    kind = None  # "SimpleRNN", "LSTM" or "GRU"
    state_names = ("H",)
    # With dim not last, tracetorch's states are views in its working layout (the last axis moved),
    # except GRU's: its last operation, H * (1 - u) + u * cand, takes H's layout, the input's.
    contiguous_states = False

    def __init__(self, in_features, out_features, dim=-1):
        super().__init__(out_features, dim)
        self.in_features, self.out_features = in_features, out_features
        for name in self.state_names:
            self._initialize_state(name)
        self._engines = {}  # per dtype: the compiled kernels of this process, and packed weights

    def __getstate__(self):
        """What ``copy`` and ``pickle`` (``torch.save``) keep: all but the compiled engines."""
        return {**super().__getstate__(), "_engines": {}}

    def zero_states(self):
        super().zero_states()
        for engine in self._engines.values():  # a new sequence: weights written unseen are looked for
            engine.compare_values = True

    def _linears(self):
        """name -> Linear, in the order the kernels take them (``_step.LINEAR_OUTPUTS``)."""
        modules = self._modules  # where ``getattr`` finds them, read at a tenth of its cost
        return {name: modules[name] if name in modules else getattr(self, name) for name in self.linear_names}

    def _engine(self, dtype, linears):
        """The engine of torch dtype ``dtype`` (keyed by it: its numpy name costs 2 us a step)."""
        engine = self._engines.get(dtype)
        if engine is None and dtype not in KERNEL_DTYPES:
            raise TypeError(f"{type(self).__name__}: the compiled kernels run float16, float32 and float64 layers, "
                            f"and this one is {str(dtype).removeprefix('torch.')}; cast it with .float() or .half()")
        if engine is None or not engine.runs(linears):  # new, or a Linear was replaced since
            engine = self._engines[dtype] = StepEngine(self.kind, linears, self.in_features,
                                                       self.out_features, numpy_dtype(dtype).name)
        return engine

    def _check_input(self, x):
        owner = type(self).__name__
        if isinstance(x, np.ndarray):
            if x.dtype.kind != "f":
                raise TypeError(f"{owner}: expected a floating-point input, got dtype {x.dtype}")
            if x.dtype.itemsize > 8:  # longdouble, which torch has no dtype for
                x = x.astype(np.float64)
            return torch.from_numpy(np.require(x, requirements="C")), True  # torch takes no negative strides
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{owner}: expected a torch tensor or numpy array, got {type(x).__name__}")
        if x.is_nested or x.layout != torch.strided:
            got = "a nested tensor" if x.is_nested else f"layout {x.layout}"
            raise TypeError(f"{owner}: expected a dense tensor, got {got}")
        if not x.is_floating_point():
            raise TypeError(f"{owner}: expected a floating-point input, got dtype {x.dtype}")
        if not x.is_cpu:
            note = " (the tracetorch layers have no GPU kernels yet)" if x.is_cuda else ""
            raise TypeError(f"{owner}: expected a CPU tensor, got one on {x.device}{note}")
        return x.resolve_neg(), False  # its values, where a view such as z.conj().imag negates them

    def forward(self, x):
        owner = type(self).__name__
        x, from_numpy = self._check_input(x)
        if not -x.ndim <= self.dim < x.ndim:
            raise ValueError(f"{owner}: dim={self.dim} is out of range for an input of {x.ndim} dimensions")
        if x.shape[self.dim] != self.in_features:
            raise ValueError(f"{owner}: expected {self.in_features} features on axis dim={self.dim}, "
                             f"got input of shape {tuple(x.shape)}")
        self._ensure_states(x)
        expected = list(x.shape)
        expected[self.dim] = self.num_neurons
        expected = tuple(expected)  # compared with a torch.Size, a tuple, as fast as tuples are
        states = [getattr(self, name) for name in self.state_names]
        for name, state in zip(self.state_names, states):
            if state.shape != expected:
                raise ValueError(f"{owner}: state {name} has shape {tuple(state.shape)} but this input "
                                 f"needs {tuple(expected)}; call zero_states() before changing the batch")
        linears = self._linears()
        weight = linears[self.linear_names[0]].weight
        # The features axis already last: no axis to move. (Each torch call costs about 1 us even
        # where it changes nothing, and a step of a small layer is some 60 us.)
        last = self.dim in (-1, x.ndim - 1)
        working = x if last else self._to_working_dim(x)
        x2 = _as_rows(working, self.in_features, weight.dtype)
        s2 = [_as_rows(s if last else self._to_working_dim(s), self.num_neurons, weight.dtype) for s in states]
        if self.num_neurons == 0:  # no neurons, nothing to compute: empty states, as tracetorch's
            outputs = tuple(x2.narrow(1, 0, 0) for _ in states)
        else:
            outputs = self._step(x2, s2, linears, weight.dtype, from_numpy)
        for name, value in zip(self.state_names, outputs):
            if not (last and x.ndim == 2):
                value = self._from_working_dim(value.reshape(*working.shape[:-1], self.num_neurons))
            value = value.contiguous() if self.contiguous_states else value
            # A plain attribute, as ``_initialize_state`` made it, is set without nn.Module.__setattr__'s
            # look through the parameters, buffers and submodules (0.9 us a state); a state the user
            # made something else (a Parameter: TypeError, as tracetorch's) goes through it.
            if name in self.__dict__:
                self.__dict__[name] = value
            else:
                setattr(self, name, value)
        # The states stay tensors, as the state methods of ``core`` expect; numpy in, numpy out.
        return self.H.numpy() if from_numpy else self.H

    def _step(self, x2, s2, linears, dtype, from_numpy):
        """The new states from rows ``x2`` and states ``s2`` on the compiled kernels, as a tuple."""
        engine = self._engine(dtype, linears)
        c = s2[1] if len(s2) > 1 else None
        # numpy in, numpy out: no graph to record. (The parameters are listed only with grad mode on.)
        needs_grad = False
        if not from_numpy and torch.is_grad_enabled():
            params = [p for linear in linears.values() for p in (linear.weight, linear.bias)]  # a bias may be None
            needs_grad = any(t is not None and t.requires_grad for t in [x2, *s2, *params])
        if needs_grad:
            outputs = _Step.apply(engine, x2.contiguous(), s2[0].contiguous(),
                                  None if c is None else c.contiguous(), *params)
            return outputs if isinstance(outputs, tuple) else (outputs,)
        # No torch op runs on these arrays, so no graph is recorded without ``torch.no_grad``.
        h_new, c_new, _ = engine.forward(_array(x2), _array(s2[0]), None if c is None else _array(c))
        return (torch.from_numpy(h_new),) if c is None else (torch.from_numpy(h_new), torch.from_numpy(c_new))


class SimpleRNN(_CompiledLayer):
    """``H = tanh(lin(cat[H, x]))``."""

    kind = "SimpleRNN"
    linear_names = ("lin",)

    def __init__(self, in_features, out_features, dim=-1):
        super().__init__(in_features, out_features, dim)
        self.lin = nn.Linear(in_features + out_features, out_features)


class LSTM(_CompiledLayer):
    """Chunks i, f, o, g of ``gate_layers(cat[H, x])``; sigmoid on i, f, o and tanh on g."""

    kind = "LSTM"
    state_names = ("H", "C")
    linear_names = ("gate_layers",)

    def __init__(self, in_features, out_features, dim=-1):
        super().__init__(in_features, out_features, dim)
        self.gate_layers = nn.Linear(in_features + out_features, 4 * out_features)


class GRU(_CompiledLayer):
    """``r, u = sigmoid(gate_layers(cat[H, x]))``; ``cand = tanh(candidate_layer(cat[H * r, x]))``;
    ``H = H * (1 - u) + u * cand``."""

    kind = "GRU"
    linear_names = ("gate_layers", "candidate_layer")
    contiguous_states = True

    def __init__(self, in_features, out_features, dim=-1):
        super().__init__(in_features, out_features, dim)
        self.gate_layers = nn.Linear(in_features + out_features, 2 * out_features)
        self.candidate_layer = nn.Linear(in_features + out_features, out_features)
