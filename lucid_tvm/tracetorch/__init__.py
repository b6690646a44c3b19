"""The tracetorch face: ``import lucid_tvm.tracetorch as tt`` in place of ``import tracetorch as tt``
for its recurrent layers, in inference and in training."""

from . import core, rnn
from .core import Layer, Model

__all__ = ["Layer", "Model", "core", "rnn"]
