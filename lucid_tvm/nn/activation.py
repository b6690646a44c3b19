"""Activation modules. ``RNNCell.nonlinearity`` holds one of these, as in lucid."""

import numpy as np

from ..tensor import Tensor, to_numpy
from .module import Module


class Tanh(Module):
    def forward(self, input):
        return Tensor(np.tanh(to_numpy(input, "Tanh input")))


class ReLU(Module):
    def forward(self, input):
        x = to_numpy(input, "ReLU input")
        return Tensor(np.where(x < 0, np.zeros_like(x), x))  # NaN stays NaN, as in torch
