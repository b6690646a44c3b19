"""Module, Parameter and ModuleList: the parts of lucid.nn / torch.nn the recurrent layers need."""

import operator
import re
from collections import OrderedDict, namedtuple
from collections.abc import Mapping

import numpy as np

from ..tensor import Tensor, is_torch, numpy_dtype, to_numpy


def _device_name(value):
    """"cpu", "cuda" or "gpu" for a device given as a string or a torch.device; None otherwise."""
    name = getattr(value, "type", value) if is_torch(value) else value
    if isinstance(name, str) and re.fullmatch(r"(cpu|gpu|cuda)(:\d+)?", name):
        return name.split(":")[0]
    return None


def _tensor_dtype(value):
    """The dtype of an array or tensor (numpy, lucid_tvm or torch); None for anything else."""
    if isinstance(value, (np.ndarray, Tensor)) or (is_torch(value) and hasattr(value, "shape")):
        return value.dtype
    return None


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Parameter(Tensor):
    """A Tensor owned by a module. Its array is read-only: assign ``param.data = new`` to change it,
    which bumps ``version`` so that compiled layers repack their weights instead of reusing stale ones."""

    # Every write of any Parameter's data, and every Parameter or submodule assigned to a module,
    # bumps this count: a layer that saw the same count on its last call knows its weights and
    # layers are unchanged with one comparison (checking each weight's identity and version took a
    # small layer's call 0.5 us).
    writes = 0

    def __init__(self, data, requires_grad=True, dtype=None):
        self.version = 0
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        old = self.__dict__.get("_data")
        if is_torch(value):  # detached (a torch Parameter requires grad)
            value = to_numpy(value, "Parameter.data")
        self._set(np.array(value, dtype=None if old is None else old.dtype))  # a copy the module owns

    def _set(self, array):
        """Make ``array``, which this Parameter then owns, its data (of any dtype)."""
        array.flags.writeable = False
        self._data = array
        self.version += 1
        Parameter.writes += 1

    def __setstate__(self, state):
        # A copy (copy.deepcopy, pickle, torch.save) gets its array back writable: read-only
        # again, or a write into it would go unseen by the weights its layer packed.
        self.__dict__.update(state)
        self._data.flags.writeable = False

    def __dlpack__(self, **kwargs):
        # numpy exports the read-only array flagged so, and torch ignores the flag: a tensor from
        # ``torch.from_dlpack`` or ``torch.as_tensor`` would write into the weights unseen. A copy.
        if kwargs.pop("copy", None) is False:
            raise BufferError("a Parameter's data is read-only and is exported only as a copy "
                              "(assign param.data = array to change it)")
        return self._data.copy().__dlpack__(**kwargs)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class Module:
    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        # torch's rules. A Parameter replaces whatever had its name: a plain attribute left there
        # (``bias_ih = None`` of a cell without bias) would hide it from reads. A registered
        # parameter takes a Parameter or None only, and a submodule a Module only: set as a plain
        # attribute, anything else would hide it from reads while the layer, state_dict() and
        # parameters() went on with the old one.
        if isinstance(value, Parameter):
            self.__dict__.pop(name, None)
            self._modules.pop(name, None)
            self._parameters[name] = value
            Parameter.writes += 1
        elif name in self.__dict__.get("_parameters", ()):
            if value is not None:
                raise TypeError(f"{type(self).__name__}: cannot assign {type(value).__name__} as parameter "
                                f"{name!r} (a Parameter or None; to change its values assign {name}.data = array)")
            self._parameters[name] = None
            Parameter.writes += 1
        elif isinstance(value, Module):
            self.__dict__.pop(name, None)
            self._modules[name] = value
            Parameter.writes += 1  # its Parameters are assigned too (a layer's kept calls see it)
        elif name in self.__dict__.get("_modules", ()):
            raise TypeError(f"{type(self).__name__}: cannot assign {type(value).__name__} as submodule {name!r} "
                            f"(a Module)")
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):  # only reached when normal lookup fails: parameters, submodules
        entries = self.__dict__
        if name in entries.get("_parameters", ()):
            return entries["_parameters"][name]
        if name in entries.get("_modules", ()):
            return entries["_modules"][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def named_children(self):
        return iter(self._modules.items())

    def children(self):
        return (module for _, module in self.named_children())

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, module in self._modules.items():
            yield from module.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (module for _, module in self.named_modules())

    def named_parameters(self, prefix=""):
        for module_name, module in self.named_modules(prefix):
            for name, param in module._parameters.items():
                if param is not None:
                    yield (f"{module_name}.{name}" if module_name else name), param

    def parameters(self):
        return (param for _, param in self.named_parameters())

    def state_dict(self):
        return OrderedDict((name, param.data) for name, param in self.named_parameters())

    def _own_key(self, key):
        """The name in :meth:`state_dict` of a key given to :meth:`load_state_dict`: a hook for
        modules that also accept other spellings (see RNNBase)."""
        return key

    def load_state_dict(self, state_dict, strict=True):
        """Copy the values of ``state_dict`` into the parameters; returns torch's
        ``(missing_keys, unexpected_keys)``, the unexpected ones as the caller spelled them."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{type(self).__name__}.load_state_dict: expected a state dict (a mapping of "
                            f"names to values), got {type(state_dict).__name__}")
        given = {self._own_key(key): key for key in state_dict}
        own = dict(self.named_parameters())
        missing = [key for key in own if key not in given]
        unexpected = [original for key, original in given.items() if key not in own]
        if strict and (missing or unexpected):
            raise ValueError(f"{type(self).__name__}.load_state_dict: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        updates = {}
        for key, param in own.items():
            if key not in given:
                continue
            original = given[key]
            # Integers and bools are cast to the parameter's dtype, as torch's copy_ casts them.
            value = to_numpy(state_dict[original], f"{type(self).__name__}.load_state_dict[{original!r}]", "fiub")
            if value.shape != param.shape:
                raise ValueError(f"{type(self).__name__}.load_state_dict: {original!r} expected shape "
                                 f"{param.shape}, got {value.shape}")
            updates[key] = value
        for key, value in updates.items():  # all checked first: a failed load changes nothing
            own[key].data = value
        return IncompatibleKeys(missing, unexpected)

    def train(self, mode=True):
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def to(self, *args, dtype=None, device=None, non_blocking=False):
        """torch's and lucid's ``to``: a dtype (float32 or float64, as numpy's, torch's or a name)
        casts every parameter; a device ("cpu", "cuda", "cuda:N", "gpu" or a torch.device) changes
        nothing, since parameters stay host arrays and each call runs where its input lives (CUDA
        torch tensors on the GPU kernels, which keep their own copy of the weights). So
        ``non_blocking`` has no copy to overlap and is accepted for torch code as it is."""
        owner = f"{type(self).__name__}.to"
        for arg in args:
            if _device_name(arg) is not None:
                device = arg
            elif dtype is None:
                of_tensor = _tensor_dtype(arg)  # torch's to(other): other's dtype
                dtype = arg if of_tensor is None else of_tensor
            else:
                raise TypeError(f"{owner}: expected a dtype and/or a device, got {args!r}")
        if device is not None and _device_name(device) is None:
            raise ValueError(f"{owner}: expected a device 'cpu', 'cuda', 'cuda:N' or 'gpu', got {device!r}")
        if dtype is None:
            return self
        given = dtype
        try:
            dtype = numpy_dtype(dtype)
        except TypeError:
            dtype = None
        if dtype not in (np.float32, np.float64):
            got = given if dtype is None else dtype.name  # np.float16 itself prints as a class
            raise TypeError(f"{owner}: expected a dtype float32 or float64 (or a device), got {got!r}")
        # The same Parameters with new data, as torch does: references held to them (and
        # parameters shared between modules) keep working.
        for param in self.parameters():
            if param.data.dtype != dtype:
                param._set(param.data.astype(dtype))
        return self

    def float(self):
        return self.to(np.float32)

    def double(self):
        return self.to(np.float64)

    def half(self):
        return self.to(np.float16)  # a TypeError: the kernels are float32 or float64

    def requires_grad_(self, requires_grad=True):
        """Sets every parameter's ``requires_grad``, as torch's and lucid's do. This face computes
        no gradients (the tracetorch face trains), so the flag is only recorded."""
        for param in self.parameters():
            param.requires_grad = bool(requires_grad)
        return self

    def zero_grad(self, set_to_none=True):
        """Clears every parameter's ``grad``, which this face never sets: kept for torch code."""
        for param in self.parameters():
            param.grad = None

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"  ({name}): " + repr(module).replace("\n", "\n  ") for name, module in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + ("\n" + "\n".join(lines) + "\n)" if lines else ")")


class ModuleList(Module):
    def __init__(self, modules=()):
        super().__init__()
        for module in modules:
            self.append(module)

    def append(self, module):
        self._modules[str(len(self._modules))] = module
        return self

    def __getitem__(self, index):
        modules = self._modules
        if isinstance(index, int) and -len(modules) <= index < len(modules):
            return modules[str(index % len(modules))]  # keys are the positions (append only)
        return list(modules.values())[index]

    def __setitem__(self, index, module):
        # As torch's: a position (anything ``operator.index`` takes), the module assigned as a
        # submodule (seen by a layer's kept calls). Unlike torch's, not None: a layer cannot run
        # without one of its cells.
        try:
            index = operator.index(index)
        except TypeError:
            raise TypeError(f"ModuleList indices must be integers, not {type(index).__name__}") from None
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for a ModuleList of {len(self)}")
        setattr(self, str(index % len(self)), module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())
