"""The examples of the lucid 2.x documentation, run verbatim against lucid_tvm."""

import lucid_tvm as lucid
import lucid_tvm.nn as nn


def test_rnncell_examples():
    x_t = lucid.Tensor([0.5, -1.0, 0.3], requires_grad=True)  # Shape: (3,)
    cell = nn.RNNCell(input_size=3, hidden_size=2, nonlinearity="tanh")
    h_t = cell(x_t)  # hx defaults to zeros
    assert h_t.shape == (2,)

    seq = lucid.Tensor([
        [0.1, 0.2],
        [0.0, -0.4],
        [0.3, 0.5],
    ], requires_grad=True)
    cell = nn.RNNCell(input_size=2, hidden_size=3, nonlinearity="relu")
    h = None
    for x_t in seq:
        h = cell(x_t, h)
    assert repr(h).startswith("Tensor([") and repr(h).endswith("], grad=None)")

    batch = lucid.Tensor([[1.0, -0.2], [0.4, 0.6]], requires_grad=True)  # Shape: (2, 2)
    h0 = lucid.zeros(2, 4)  # Shape: (batch_size, hidden_size)
    cell = nn.RNNCell(input_size=2, hidden_size=4, bias=False)
    h1 = cell(batch, h0)
    assert h1.shape == (2, 4)


def test_lstmcell_examples():
    x_t = lucid.randn(5)  # (input_size=5)
    cell = nn.LSTMCell(input_size=5, hidden_size=3)
    h_t, c_t = cell(x_t)
    assert (h_t.shape, c_t.shape) == ((3,), (3,))

    x_t = lucid.randn(4, 6)       # (batch=4, input_size=6)
    h0 = lucid.zeros(4, 8)        # (batch, hidden_size)
    c0 = lucid.zeros(4, 8)
    cell = nn.LSTMCell(input_size=6, hidden_size=8, bias=False)
    h_t, c_t = cell(x_t, (h0, c0))
    assert (h_t.shape, c_t.shape) == ((4, 8), (4, 8))


def test_grucell_examples():
    x_t = lucid.randn(3)  # (input_size=3)
    cell = nn.GRUCell(input_size=3, hidden_size=4)
    h_t = cell(x_t)
    assert h_t.shape == (4,)

    x_t = lucid.randn(5, 2)  # (batch=5, input_size=2)
    h0 = lucid.zeros(5, 6)
    cell = nn.GRUCell(input_size=2, hidden_size=6, bias=False)
    h_t = cell(x_t, h0)
    assert h_t.shape == (5, 6)


def test_rnnbase_examples():
    seq = lucid.randn(5, 2, 3)  # (seq_len=5, batch=2, input_size=3)
    rnn = nn.RNNBase(mode="RNN_TANH", input_size=3, hidden_size=4)
    output, h_n = rnn(seq)
    assert output.shape == (5, 2, 4)
    assert h_n.shape == (1, 2, 4)

    seq = lucid.randn(2, 7, 8)  # (batch=2, seq_len=7, input_size=8)
    rnn = nn.RNNBase(
        mode="RNN_RELU",
        input_size=8,
        hidden_size=5,
        num_layers=3,
        dropout=0.1,
        batch_first=True,
    )
    output, h_n = rnn(seq)
    assert output.shape == (2, 7, 5)  # matches batch-first layout
    assert h_n.shape == (3, 2, 5)  # one hidden state per layer

    h0 = lucid.zeros(2, 2, 4)  # (num_layers=2, batch=2, hidden_size=4)
    rnn = nn.RNNBase("RNN_TANH", input_size=4, hidden_size=4, num_layers=2)
    seq = lucid.randn(6, 2, 4)
    output, h_n = rnn(seq, h0)
    assert (output.shape, h_n.shape) == ((6, 2, 4), (2, 2, 4))

    h0 = lucid.zeros(2, 3, 6)
    c0 = lucid.zeros(2, 3, 6)
    rnn = nn.RNNBase("LSTM", input_size=8, hidden_size=6, num_layers=2, bias=True)
    seq = lucid.randn(5, 3, 8)
    output, (h_n, c_n) = rnn(seq, (h0, c0))
    assert (output.shape, h_n.shape, c_n.shape) == ((5, 3, 6), (2, 3, 6), (2, 3, 6))

    seq = lucid.randn(4, 1, 5)
    gru = nn.RNNBase("GRU", input_size=5, hidden_size=3)
    output, h_n = gru(seq)
    assert (output.shape, h_n.shape) == ((4, 1, 3), (1, 1, 3))


def test_rnn_examples():
    seq = lucid.randn(4, 6, 10)  # (batch=4, seq_len=6, input_size=10)
    rnn = nn.RNN(input_size=10, hidden_size=12, batch_first=True)
    output, h_n = rnn(seq)
    assert output.shape == (4, 6, 12)
    assert h_n.shape == (1, 4, 12)

    seq = lucid.randn(5, 3, 8)  # (seq_len=5, batch=3, input_size=8)
    h0 = lucid.zeros(2, 3, 6)   # (num_layers=2, batch=3, hidden_size=6)
    rnn = nn.RNN(
        input_size=8,
        hidden_size=6,
        num_layers=2,
        nonlinearity="relu",
        dropout=0.2,
    )
    output, h_n = rnn(seq, h0)
    assert (output.shape, h_n.shape) == ((5, 3, 6), (2, 3, 6))


def test_lstm_examples():
    seq = lucid.randn(3, 5, 4)  # (batch=3, seq_len=5, input_size=4)
    lstm = nn.LSTM(input_size=4, hidden_size=6, batch_first=True)
    output, (h_n, c_n) = lstm(seq)
    assert (output.shape, h_n.shape, c_n.shape) == ((3, 5, 6), (1, 3, 6), (1, 3, 6))

    h0 = lucid.zeros(2, 2, 8)
    c0 = lucid.zeros(2, 2, 8)
    seq = lucid.randn(7, 2, 10)
    lstm = nn.LSTM(
        input_size=10,
        hidden_size=8,
        num_layers=2,
        dropout=0.1,
    )
    output, (h_n, c_n) = lstm(seq, (h0, c0))
    assert output.shape == (7, 2, 8)


def test_gru_examples():
    seq = lucid.randn(6, 4, 3)  # (seq_len=6, batch=4, input_size=3)
    gru = nn.GRU(input_size=3, hidden_size=5)
    output, h_n = gru(seq)
    assert (output.shape, h_n.shape) == ((6, 4, 5), (1, 4, 5))

    h0 = lucid.zeros(2, 3, 7)
    seq = lucid.randn(5, 3, 4)
    gru = nn.GRU(
        input_size=4,
        hidden_size=7,
        num_layers=2,
        dropout=0.2,
    )
    output, h_n = gru(seq, h0)
    assert (output.shape, h_n.shape) == ((5, 3, 7), (2, 3, 7))
