"""tracetorch's hidden-state contract: ``tt.core.Layer`` and ``tt.Model`` (as in tracetorch 0.19.2's code).

States are plain attributes registered by name, None until the first forward, then zeros with the
input's dtype and device and the input's shape with axis ``dim`` set to ``num_neurons``.
"""

import types

import torch
from torch import nn


class Layer(nn.Module):
    def __init__(self, num_neurons, dim=-1):
        super().__init__()
        self._state_names = set()
        self.num_neurons = num_neurons
        self.dim = dim

    def _initialize_state(self, state_name):
        self._state_names.add(state_name)
        setattr(self, state_name, None)

    # One state by name, as tracetorch's subclasses call them, and all states.

    def _ensure_state(self, name, reference):
        if getattr(self, name) is None:
            shape = list(reference.shape)
            shape[self.dim] = self.num_neurons
            setattr(self, name, torch.zeros(shape, dtype=reference.dtype, device=reference.device))

    def _zero_state(self, name):
        setattr(self, name, None)

    def _detach_state(self, name):
        state = getattr(self, name)
        if state is not None:
            setattr(self, name, state.detach())

    def _ensure_states(self, reference):
        for name in self._state_names:
            self._ensure_state(name, reference)

    def zero_states(self):
        """Forget the states; the next forward creates them anew (a new batch size works then)."""
        for name in self._state_names:
            self._zero_state(name)

    def detach_states(self):
        """Cut the states from the autograd graph: truncated backpropagation through time."""
        for name in self._state_names:
            self._detach_state(name)

    def TTcompile(self):
        """Nothing to do. tracetorch's bakes the activation of each parameter registered with its
        ``_register_parameter`` into a buffer; its recurrent layers register none, and neither do
        these, whose kernels TVM has compiled already."""

    def TTdecompile(self):
        """Nothing to do (see :meth:`TTcompile`)."""

    def _to_working_dim(self, tensor):
        return tensor.movedim(self.dim, -1)

    def _from_working_dim(self, tensor):
        return tensor.movedim(-1, self.dim)


def _attributes(obj):
    """An object's own attributes (tracetorch's walks read ``__dict__``), or none where reading
    them raises, and none of a Python module's (a model holding ``np``: tracetorch's walks fail
    there, and going through every module it imports took 0.6 s and warned of deprecations)."""
    if isinstance(obj, types.ModuleType):
        return []
    try:
        return list(getattr(obj, "__dict__", {}).items())
    except Exception:  # noqa: BLE001 - an object whose attributes cannot be read has none to walk
        return []


def _walk_layers(root):
    """[(path, layer)] for every Layer under ``root``, named and found as tracetorch's
    ``save_states`` finds them, so that either library loads the other's states: submodules
    (``net.0.H``), then every attribute, containers item by item (``.blocks[1].H``,
    ``.heads[key].C``) and any other object's own attributes (``.bag.layers[0].H``). Like
    tracetorch's, it reaches a layer once per way to it: also through ``_modules``
    (``._modules[rnn].H`` beside ``rnn.H``). Each object is walked once, and what lies under it
    is named again below every other way to it; a reference back to an object being walked is
    not followed. (tracetorch's walk raises RecursionError on any cycle, e.g. a model holding the
    numpy module; walking every path round one took exponential time.)"""
    under, walking = {}, set()

    def below(obj, root=False):  # [(path suffix, layer)], the suffixes starting "." or "["
        key = id(obj)
        if key in under:
            return under[key]
        if key in walking:
            return []
        walking.add(key)
        found = [("", obj)] if isinstance(obj, Layer) else []
        if isinstance(obj, nn.Module):
            for name, child in obj._modules.items():  # the root's without the dot (``rnn.H``), as tracetorch's
                found += [(f"{'' if root else '.'}{name}{rest}", layer) for rest, layer in below(child)]
        for attr, value in _attributes(obj):
            if value is None:
                continue
            if isinstance(value, (list, tuple, set)):
                items = [(f".{attr}[{i}]", item) for i, item in enumerate(value)]
            elif isinstance(value, dict):
                items = [(f".{attr}[{k}]", item) for k, item in value.items()]
            else:
                items = [] if isinstance(value, Layer) else [(f".{attr}", value)]
            for head, item in items:
                if _attributes(item) or isinstance(item, nn.Module):  # (a list of numbers: none)
                    found += [(head + rest, layer) for rest, layer in below(item)]
        walking.discard(key)
        under[key] = found
        return found

    return below(root, root=True)


class Model(nn.Module):
    """A torch Module whose state methods reach every tracetorch layer inside it."""

    def _layers(self):
        return _walk_layers(self)

    def zero_states(self):
        self._call_recursive("zero_states")

    def detach_states(self):
        self._call_recursive("detach_states")

    def TTcompile(self):
        self._call_recursive("TTcompile")

    def TTdecompile(self):
        self._call_recursive("TTdecompile")

    def _call_recursive(self, method):
        """tracetorch's walk for the state methods: below this model, call ``method`` on every
        Layer, on every nested Model whose class overrides it (the override alone), and on any
        other object that has it (a custom stateful module); go into submodules and into every
        attribute, containers item by item. This model's own override is not called again: it is
        what called this (tracetorch's walk recurses forever there)."""
        seen = {id(self)}

        def visit(obj):
            if id(obj) in seen:
                return
            seen.add(id(obj))
            if isinstance(obj, Model):
                own = getattr(type(obj), method, None)
                if own is not getattr(Model, method):
                    own(obj)
            elif callable(getattr(obj, method, None)):
                getattr(obj, method)()
            children(obj)

        def children(obj):
            if isinstance(obj, nn.Module):
                for child in obj._modules.values():
                    if child is not None:
                        visit(child)
            for _, value in _attributes(obj):
                if isinstance(value, (list, tuple, set)):
                    for item in value:
                        visit(item)
                elif isinstance(value, dict):
                    for item in value.values():
                        visit(item)
                elif value is not None:
                    visit(value)

        children(self)

    def save_states(self):
        """``{"path.H": tensor}`` for every created state, detached copies."""
        states = {}
        for path, layer in self._layers():
            for name in layer._state_names:
                value = getattr(layer, name)
                if value is not None:
                    states[f"{path}.{name}" if path else name] = value.detach().clone()
        return states

    def load_states(self, states, strict=True, device=None):
        missing = []
        for path, layer in self._layers():
            for name in layer._state_names:
                key = f"{path}.{name}" if path else name
                if key not in states:
                    missing.append(key)
                    continue
                value, current = states[key], getattr(layer, name)
                if current is not None and current.shape != value.shape:
                    raise ValueError(f"Shape mismatch for {key}: expected {current.shape}, got {value.shape}")
                if device is None:
                    device = next((p.device for p in layer.parameters()), value.device)
                setattr(layer, name, value.to(device))
        if strict and missing:
            raise ValueError(f"Missing states for: {missing}")
