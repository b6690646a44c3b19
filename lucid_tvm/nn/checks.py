"""Input checks shared by the CPU and GPU paths of the layers: one message per mistake, saying
what was expected and what came."""


def cell_input(owner, shape, input_size):
    """``(batched, batch)`` of a cell input of ``shape``: (batch, input_size) or (input_size,)."""
    shape = tuple(shape)
    if len(shape) not in (1, 2):
        raise ValueError(f"{owner}: expected input of 1 (unbatched) or 2 (batch, input_size) "
                         f"dimensions, got {len(shape)} with shape {shape}")
    if shape[-1] != input_size:
        raise ValueError(f"{owner}: expected input with feature size {input_size} "
                         f"(last axis), got shape {shape}")
    batched = len(shape) == 2
    return batched, shape[0] if batched else 1


def sequence_input(owner, shape, input_size, batch_first):
    """Whether a sequence input of ``shape`` is batched: (seq, batch, input_size) (or batch first)
    or (seq, input_size) unbatched, of at least one step. A batch of 0 gives empty outputs, as
    torch's layers do."""
    shape = tuple(shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"{owner}: expected input of 3 dimensions ((seq, batch, feature), or "
                         f"(batch, seq, feature) with batch_first) or 2 (unbatched), got "
                         f"{len(shape)} with shape {shape}")
    if shape[-1] != input_size:
        raise ValueError(f"{owner}: expected input with feature size {input_size} "
                         f"(last axis), got shape {shape}")
    steps = shape[1] if len(shape) == 3 and batch_first else shape[0]
    if steps == 0:
        raise ValueError(f"{owner}: expected a sequence of at least one step, got input of shape {shape}")
    return len(shape) == 3


def lstm_states(owner, hx):
    """``(h_0, c_0)`` of an LSTM's ``hx``: a tuple or list of two states, or None for zeros."""
    if hx is None:
        return None, None
    if not isinstance(hx, (tuple, list)):
        raise TypeError(f"{owner}: expected hx as a tuple (h_0, c_0), got {type(hx).__name__}")
    if len(hx) != 2:
        raise ValueError(f"{owner}: expected hx as a tuple of two states (h_0, c_0), got a "
                         f"{type(hx).__name__} of {len(hx)}")
    for name, state in zip(("h_0", "c_0"), hx):
        if state is None:  # torch fails on it deep inside; zeros for one alone would be a guess
            raise TypeError(f"{owner}: expected hx as a tuple of two states (h_0, c_0), got None for {name} "
                            f"(pass hx=None for zeros)")
    return hx[0], hx[1]
