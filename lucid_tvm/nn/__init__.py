"""The lucid.nn face: ``import lucid_tvm.nn as nn``."""

from .activation import ReLU, Tanh
from .module import Module, ModuleList, Parameter
from .rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNBase, RNNCell

__all__ = ["Module", "ModuleList", "Parameter", "Tanh", "ReLU", "RNNCell", "LSTMCell", "GRUCell",
           "RNNBase", "RNN", "LSTM", "GRU"]
