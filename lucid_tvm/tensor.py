"""The array type of the lucid face, and the conversion of whatever users pass in.

A :class:`Tensor` is a thin wrapper over a numpy array (lucid 2.x tensors are the same), so it
converts to numpy, DLPack and torch without copying. Layers accept Tensors, numpy arrays,
CPU torch tensors (through DLPack, no copy) and lucid tensors (objects with a numpy ``.data``).
"""

import numpy as np

DEFAULT_DTYPE = np.float32

_rng = np.random.default_rng()


def seed(value):
    """Seed lucid_tvm's generator: ``randn`` and the dropout masks between layers."""
    global _rng
    _rng = np.random.default_rng(value)


def generator():
    return _rng


class Tensor:
    """``Tensor(data, requires_grad=False, dtype=None)``: lists and scalars become float32."""

    def __init__(self, data, requires_grad=False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        if dtype is None and not (isinstance(data, np.ndarray) and data.dtype.kind == "f"):
            dtype = DEFAULT_DTYPE
        self.data = np.asarray(data, dtype=dtype)
        self.requires_grad = bool(requires_grad)
        self.grad = None

    @classmethod
    def _wrap(cls, array):
        """A Tensor over ``array``, a numpy array of floats, as it is (no checks, no copy): for
        the outputs a layer makes on every call, where ``Tensor(array)`` costs twice as long."""
        tensor = object.__new__(cls)
        tensor.data, tensor.requires_grad, tensor.grad = array, False, None
        return tensor

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    def numpy(self):
        return self.data

    def __array__(self, dtype=None, copy=None):
        if dtype is not None and dtype != self.data.dtype:
            return self.data.astype(dtype)
        return self.data.copy() if copy else self.data

    def __dlpack__(self, **kwargs):
        return self.data.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.data.__dlpack_device__()

    def __len__(self):
        return len(self.data)

    def __iter__(self):
        return (Tensor(row) for row in self.data)

    def __getitem__(self, index):
        return Tensor(self.data[index])

    def __repr__(self):
        return f"Tensor({np.array2string(self.data, separator=', ', prefix='Tensor(')}, grad={self.grad})"

    def __str__(self):
        return str(self.data)


def _shape(shape):
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape


def randn(*shape, requires_grad=False, dtype=DEFAULT_DTYPE):
    return Tensor(_rng.standard_normal(_shape(shape)).astype(dtype), requires_grad=requires_grad)


def zeros(*shape, requires_grad=False, dtype=DEFAULT_DTYPE):
    return Tensor(np.zeros(_shape(shape), dtype=dtype), requires_grad=requires_grad)


def ones(*shape, requires_grad=False, dtype=DEFAULT_DTYPE):
    return Tensor(np.ones(_shape(shape), dtype=dtype), requires_grad=requires_grad)


_NUMPY_FLOATS = ("torch.float16", "torch.float32", "torch.float64")


def is_torch(value):
    """Whether ``value`` is a torch object (a tensor, Parameter, dtype or device), told by its
    type's module so that torch is never imported here: the lucid face runs without it."""
    module = type(value).__module__
    return module == "torch" or module.startswith("torch.")


def numpy_dtype(dtype):
    """numpy's dtype for a numpy dtype, a name, or a torch dtype (``torch.float64``, which numpy
    does not take); TypeError where numpy has none."""
    return np.dtype(str(dtype).removeprefix("torch.") if is_torch(dtype) else dtype)


def to_numpy(value, what, kinds="f"):
    """The numpy array behind ``value`` (no copy where possible); TypeError for anything else,
    and for arrays whose dtype is not of ``kinds`` (numpy's kind codes: floats by default).

    ``what`` names the argument in the error, e.g. ``"LSTM input"``.
    """
    if isinstance(value, Tensor):
        array = value.data
    elif isinstance(value, np.ndarray):
        array = value if type(value) is np.ndarray else np.asarray(value)  # np.matrix is always 2-D
    elif is_torch(value) and hasattr(value, "__dlpack__"):  # a tensor (not a PackedSequence, a Generator)
        if value.device.type != "cpu":
            raise TypeError(f"{what}: expected a CPU tensor, got a tensor on {value.device}")
        if value.is_nested or str(value.layout) != "torch.strided":
            got = "a nested tensor" if value.is_nested else f"layout {value.layout}"
            raise TypeError(f"{what}: expected a dense tensor, got {got}")
        value = value.detach()
        if value.is_neg():  # DLPack carries no negative bit (a view such as z.conj().imag)
            value = value.resolve_neg()
        if str(value.dtype) not in _NUMPY_FLOATS and value.is_floating_point():
            value = value.float()  # bfloat16 and float8 have no numpy dtype; float32 holds them exactly
        array = np.from_dlpack(value)
    elif isinstance(getattr(value, "data", None), np.ndarray):  # a lucid tensor
        array = value.data
    else:
        raise TypeError(f"{what}: expected a lucid_tvm.Tensor, numpy array, torch tensor or lucid "
                        f"tensor, got {type(value).__name__}")
    if array.dtype.kind not in kinds:
        expected = "a floating-point" if kinds == "f" else "a real-valued"
        raise TypeError(f"{what}: expected {expected} tensor, got dtype {array.dtype}")
    return array
