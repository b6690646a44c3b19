"""Bad arguments raise ValueError / TypeError that name the layer, what was expected and what came."""

import numpy as np
import pytest
import torch

import lucid_tvm.nn as nn


@pytest.mark.parametrize("kwargs,error,match", [
    ({"input_size": 0}, ValueError, "input_size must be at least 1, got 0"),
    ({"hidden_size": -3}, ValueError, "hidden_size must be at least 1, got -3"),
    ({"num_layers": 0}, ValueError, "num_layers must be at least 1, got 0"),
    ({"input_size": 2.5}, TypeError, "input_size must be an int, got float"),
    ({"hidden_size": "8"}, TypeError, "hidden_size must be an int, got str"),
    ({"dropout": 1.5, "num_layers": 2}, ValueError, r"dropout must be a number in \[0, 1\], got 1.5"),
    ({"dropout": -0.1, "num_layers": 2}, ValueError, "dropout must be"),
    ({"dropout": "0.5", "num_layers": 2}, TypeError, r"dropout must be a number in \[0, 1\], got str"),
    ({"mode": "LSTMX"}, ValueError, "mode must be one of"),
])
def test_constructor_errors(kwargs, error, match):
    args = {"mode": "GRU", "input_size": 3, "hidden_size": 4, **kwargs}
    with pytest.raises(error, match=match):
        nn.RNNBase(**args)


def test_nonlinearity_errors():
    with pytest.raises(ValueError, match="RNN: nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        nn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="RNNCell: nonlinearity"):
        nn.RNNCell(3, 4, nonlinearity="gelu")


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="num_layers=1"):
        nn.LSTM(3, 4, dropout=0.5)


@pytest.mark.parametrize("shape,match", [
    ((4,), "expected input of 3 dimensions.*got 1"),
    ((2, 3, 4, 5), "expected input of 3 dimensions.*got 4"),
    ((6, 2, 5), r"feature size 3 \(last axis\), got shape \(6, 2, 5\)"),
    ((0, 2, 3), "at least one step"),
    ((0, 3), "at least one step"),
])
def test_sequence_input_errors(shape, match):
    with pytest.raises(ValueError, match=f"GRU: .*{match}"):
        nn.GRU(3, 4)(np.zeros(shape, np.float32))


def test_hidden_state_errors():
    x = np.zeros((6, 2, 3), np.float32)
    gru = nn.GRU(3, 4, num_layers=2)
    with pytest.raises(ValueError, match=r"GRU: a 2-D hx .* fits only one layer.*\(2, 2, 4\), got \(2, 4\)"):
        gru(x, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"expected hx of shape .* = \(2, 2, 4\), got \(2, 3, 4\)"):
        gru(x, np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"unbatched 2-D input expected hx of shape \(2, 4\), got \(2, 1, 4\)"):
        gru(x[:, 0], np.zeros((2, 1, 4), np.float32))
    with pytest.raises(TypeError, match="GRU hx"):
        gru(x, "zeros")
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.zeros(6, 2, 3), [6, 4])
    with pytest.raises(TypeError, match="GRU input: expected a lucid_tvm.Tensor, .* got PackedSequence"):
        gru(packed)
    with pytest.raises(TypeError, match="GRU input: expected a lucid_tvm.Tensor, .* got Generator"):
        gru(torch.Generator())
    lstm = nn.LSTM(3, 4)
    with pytest.raises(TypeError, match=r"LSTM: expected hx as a tuple \(h_0, c_0\), got ndarray"):
        lstm(x, np.zeros((1, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"LSTM: expected hx as a tuple of two states \(h_0, c_0\), got a tuple of 3"):
        lstm(x, (np.zeros((1, 2, 4), np.float32),) * 3)
    with pytest.raises(ValueError, match=r"expected c_0 of shape .*\(1, 2, 4\), got \(1, 2, 5\)"):
        lstm(x, (np.zeros((1, 2, 4), np.float32), np.zeros((1, 2, 5), np.float32)))
    for hx, missing in [((np.zeros((1, 2, 4), np.float32), None), "c_0"), ((None, np.zeros((1, 2, 4))), "h_0")]:
        with pytest.raises(TypeError, match=rf"LSTM: expected hx as a tuple of two states \(h_0, c_0\), got None for {missing}"):
            lstm(x, hx)  # not zeros for the missing one: torch refuses it too


def test_cell_errors():
    cell = nn.LSTMCell(3, 4)
    with pytest.raises(ValueError, match=r"LSTMCell: expected input of 1 \(unbatched\) or 2"):
        cell(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="LSTMCell: expected input with feature size 3"):
        cell(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"LSTMCell: expected h_0 of shape \(2, 4\) for batched"):
        cell(np.zeros((2, 3), np.float32), (np.zeros((3, 4)), np.zeros((2, 4))))
    with pytest.raises(TypeError, match=r"LSTMCell: expected hx as a tuple \(h_0, c_0\), got ndarray"):
        cell(np.zeros((2, 3), np.float32), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"LSTMCell: expected hx as a tuple of two states \(h_0, c_0\), got a list of 1"):
        cell(np.zeros((2, 3), np.float32), [np.zeros((2, 4))])
    with pytest.raises(TypeError, match=r"LSTMCell: expected hx as a tuple of two states \(h_0, c_0\), got None for c_0"):
        cell(np.zeros((2, 3), np.float32), (np.zeros((2, 4)), None))
    with pytest.raises(ValueError, match=r"RNNCell: expected hx of shape \(4,\) for unbatched"):
        nn.RNNCell(3, 4)(np.zeros(3, np.float32), np.zeros((1, 4)))
    with pytest.raises(TypeError, match="GRUCell input: expected a floating-point tensor, got dtype int64"):
        nn.GRUCell(3, 4)(np.zeros((2, 3), np.int64))
