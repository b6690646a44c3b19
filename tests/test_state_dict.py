"""Module plumbing: our keys, PyTorch / lucid 3.x flat keys, and wrong keys or shapes."""

import copy
import pickle

import numpy as np
import pytest
import torch

import lucid_tvm.nn as nn


def test_own_keys_round_trip(rng):
    a = nn.GRU(4, 6, num_layers=2, bidirectional=True)
    b = nn.GRU(4, 6, num_layers=2, bidirectional=True)
    keys = list(a.state_dict())
    assert keys[:4] == ["layers.0.weight_ih", "layers.0.weight_hh", "layers.0.bias_ih", "layers.0.bias_hh"]
    assert len(keys) == 16
    b.load_state_dict(a.state_dict())
    x = rng.standard_normal((5, 2, 4)).astype(np.float32)
    np.testing.assert_array_equal(a(x)[0].numpy(), b(x)[0].numpy())


def test_flat_keys_from_torch_map_to_layers():
    ref = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True)
    ours = nn.LSTM(3, 5, num_layers=2, bidirectional=True)
    ours.load_state_dict(ref.state_dict())
    np.testing.assert_array_equal(ours.layers[3].weight_hh.numpy(), ref.weight_hh_l1_reverse.detach().numpy())
    np.testing.assert_array_equal(ours.layers[2].bias_ih.numpy(), ref.bias_ih_l1.detach().numpy())
    # numpy values work as well
    ours.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})


def test_wrong_keys_and_shapes_are_named():
    ours = nn.RNN(3, 5)
    sd = dict(torch.nn.RNN(3, 5).state_dict())
    with pytest.raises(ValueError, match="missing keys.*layers.0.bias_hh"):
        ours.load_state_dict({k: v for k, v in sd.items() if k != "bias_hh_l0"})
    with pytest.raises(ValueError, match="unexpected keys.*weight_ih_l0_reverse"):
        ours.load_state_dict({**sd, "weight_ih_l0_reverse": sd["weight_ih_l0"]})
    with pytest.raises(ValueError, match=r"'weight_ih_l0' expected shape \(5, 3\), got \(5, 4\)"):  # as given
        ours.load_state_dict({**sd, "weight_ih_l0": torch.zeros(5, 4)})
    missing, unexpected = ours.load_state_dict({"weight_ih_l0": sd["weight_ih_l0"]}, strict=False)
    assert "layers.0.weight_hh" in missing and unexpected == []


def test_wrongly_shaped_data_is_named_at_the_next_call():
    """``param.data = array`` takes any shape (as torch's does); the next call says which."""
    cell, x = nn.GRUCell(4, 3), np.ones((2, 4), np.float32)
    cell(x)
    cell.weight_hh.data = np.ones((9, 7), np.float32)
    with pytest.raises(ValueError, match=r"GRUCell\(4, 3\): expected weight_hh of shape \(9, 3\), got \(9, 7\)"):
        cell(x)
    stacked = nn.LSTM(4, 3, num_layers=2)
    stacked.layers[1].bias_ih = nn.Parameter(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"LSTMCell\(3, 3\): expected bias_ih of shape \(12,\), got \(3,\)"):
        stacked(np.ones((5, 2, 4), np.float32))


def test_load_state_dict_reports_keys_as_torch_does():
    sd = torch.nn.LSTM(4, 3, num_layers=2).state_dict()
    ours, ref = nn.LSTM(4, 3, num_layers=2), torch.nn.LSTM(4, 3, num_layers=2)
    # The caller's own spelling for what is unexpected; a layer number with a leading zero is not one.
    given = {("weight_ih_l01" if k == "weight_ih_l1" else k): v for k, v in sd.items()}
    given["weight_ih_l2"] = sd["weight_ih_l1"]
    result, expected = ours.load_state_dict(given, strict=False), ref.load_state_dict(given, strict=False)
    assert result.unexpected_keys == expected.unexpected_keys == ["weight_ih_l01", "weight_ih_l2"]
    assert result.missing_keys == ["layers.1.weight_ih"] and expected.missing_keys == ["weight_ih_l1"]
    missing, unexpected = result  # still a pair
    assert (missing, unexpected) == (result.missing_keys, result.unexpected_keys)


def test_load_state_dict_refuses_what_is_not_a_mapping_as_torch_does():
    with pytest.raises(TypeError, match="dict-like"):
        torch.nn.LSTM(4, 3).load_state_dict([("weight_ih_l0", torch.zeros(12, 4))])
    ours = nn.LSTM(4, 3)
    before = ours.state_dict()
    for value in ([("weight_ih_l0", np.zeros((12, 4), np.float32))], None, "weight_ih_l0"):
        with pytest.raises(TypeError, match=r"LSTM.load_state_dict: expected a state dict \(a mapping of names "
                                            rf"to values\), got {type(value).__name__}"):
            ours.load_state_dict(value)
    assert all(np.array_equal(v, before[k]) for k, v in ours.state_dict().items())


def test_load_state_dict_casts_integers_and_bools_as_torch_does(rng):
    """torch's load_state_dict copies each value into its parameter, casting integers and bools;
    complex values are a TypeError here (torch drops the imaginary part, with a warning)."""
    ref, ours = torch.nn.GRU(3, 2), nn.GRU(3, 2)
    given = {k: torch.from_numpy(rng.integers(-3, 4, v.shape)) for k, v in ref.state_dict().items()}
    given["bias_hh_l0"] = given["bias_hh_l0"] > 0
    ref.load_state_dict(given)
    ours.load_state_dict(given)
    x = rng.standard_normal((4, 1, 3)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(ours(x)[0].numpy(), ref(torch.from_numpy(x))[0].numpy(), atol=1e-5, rtol=0)
    given["weight_ih_l0"] = given["weight_ih_l0"].to(torch.complex64)
    with pytest.raises(TypeError, match=r"GRU.load_state_dict\['weight_ih_l0'\]: expected a real-valued tensor, "
                                        r"got dtype complex64"):
        ours.load_state_dict(given)


def test_assigning_other_than_a_parameter_is_refused_as_in_torch(rng):
    x = rng.standard_normal((2, 4)).astype(np.float32)
    with pytest.raises(TypeError, match="cannot assign"):
        torch.nn.GRUCell(4, 3).weight_ih = torch.zeros(9, 4)
    cell = nn.GRUCell(4, 3)
    before, weights = cell(x).numpy().copy(), dict(cell.state_dict())
    for value in (np.zeros((9, 4), np.float32), nn.Parameter(np.zeros((9, 4), np.float32)).data,
                  torch.nn.Parameter(torch.zeros(9, 4))):
        with pytest.raises(TypeError, match=r"GRUCell: cannot assign \w+ as parameter 'weight_ih' \(a Parameter or "
                                            r"None; to change its values assign weight_ih.data = array\)"):
            cell.weight_ih = value
    with pytest.raises(TypeError, match="cannot assign GRUCell as parameter 'bias_ih'"):
        cell.bias_ih = nn.GRUCell(1, 1)
    stacked = nn.LSTM(4, 3)
    with pytest.raises(TypeError, match="cannot assign list as submodule 'layers'"):
        stacked.layers = [nn.LSTMCell(4, 3)]
    assert isinstance(stacked.layers, nn.ModuleList)
    assert cell.weight_ih is cell._parameters["weight_ih"] and cell.state_dict().keys() == weights.keys()
    np.testing.assert_array_equal(cell(x).numpy(), before)


def test_a_parameter_assigned_replaces_what_had_its_name_as_in_torch(rng):
    ref, ours = torch.nn.GRUCell(4, 3, bias=False), nn.GRUCell(4, 3, bias=False)
    ours.load_state_dict(ref.state_dict())
    bias = rng.standard_normal(9).astype(np.float32)
    ref.bias_ih, ours.bias_ih = torch.nn.Parameter(torch.from_numpy(bias.copy())), nn.Parameter(bias)
    assert isinstance(ours.bias_ih, nn.Parameter) and list(ours.state_dict()) == list(ref.state_dict())
    x = rng.standard_normal((2, 4)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(ours(x).numpy(), ref(torch.from_numpy(x)).numpy(), atol=1e-6)
    # A Parameter replaces a submodule of its name too, as in torch.
    cell = nn.RNNCell(4, 3)
    cell.nonlinearity = nn.Parameter(bias)
    assert cell.nonlinearity is cell._parameters["nonlinearity"] and "nonlinearity" not in cell._modules


def test_to_keeps_the_parameter_objects_as_torch_does(rng):
    ref, ours = torch.nn.GRU(4, 3), nn.GRU(4, 3)
    ours.load_state_dict(ref.state_dict())
    held_ref, held = list(ref.parameters()), list(ours.parameters())
    ref.double(), ours.double()
    assert all(a is b for a, b in zip(held, ours.parameters()))
    assert all(a is b for a, b in zip(held_ref, ref.parameters()))
    new = rng.standard_normal(held_ref[1].shape)
    held_ref[1].data = torch.from_numpy(new)
    held[1].data = new  # a held reference still drives the layer
    x = rng.standard_normal((6, 2, 4))
    with torch.no_grad():
        expected = ref(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(ours(x)[0].numpy(), expected, atol=1e-10, rtol=0)
    a, b = nn.GRUCell(4, 3), nn.GRUCell(4, 3)
    b.weight_hh = a.weight_hh
    a.double(), b.double()
    assert a.weight_hh is b.weight_hh and a.weight_hh.dtype == np.float64  # still shared
    assert ours.to(torch.zeros(1)) is ours and ours.dtype == np.float32  # torch's to(other): other's dtype
    assert ours.to(np.zeros(1)).dtype == np.float64


def test_parameters_of_another_dtype_are_named(rng):
    x = rng.standard_normal((5, 2, 4)).astype(np.float32)
    for which in (0, 1):
        stacked = nn.GRU(4, 3, num_layers=2)
        stacked(x)
        stacked.layers[which].double()
        with pytest.raises(TypeError, match=r"GRUCell\(3, 3\): its parameters are float(32|64) but its input "
                                            r"is float(32|64) from the layer before; the layers of a module share one dtype"):
            stacked(x)
        stacked.layers[which].float()
        stacked(x)
    cell = nn.LSTMCell(4, 3)
    cell.weight_hh = nn.Parameter(cell.weight_hh.data.astype(np.float64))
    with pytest.raises(TypeError, match=r"LSTMCell\(4, 3\): weight_hh is float64 where weight_ih is float32"):
        cell(x[0])


def test_parameter_data_takes_torch_parameters(rng):
    ref, ours = torch.nn.LSTM(4, 3), nn.LSTM(4, 3)
    for name, param in ref.named_parameters():  # each requires grad
        getattr(ours.layers[0], name[:-3]).data = param
    x = rng.standard_normal((5, 2, 4)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(ours(x)[0].numpy(), expected, atol=2e-5, rtol=0)
    assert ours.flatten_parameters() is None  # torch code calls it; nothing to do here


def test_module_plumbing():
    m = nn.LSTM(3, 4, num_layers=2, bias=False)
    assert isinstance(m.layers, nn.ModuleList) and len(m.layers) == 2
    assert isinstance(m.layers[1], nn.LSTMCell) and m.layers[1].input_size == 4
    assert m.mode == "LSTM" and m.nonlinearity == "tanh"
    assert nn.RNN(3, 4, nonlinearity="relu").mode == "RNN_RELU"
    assert nn.RNN(3, 4, nonlinearity="relu").nonlinearity == "relu"
    assert len(list(m.parameters())) == 4
    assert m.training and all(c.training for c in m.layers)
    m.eval()
    assert not m.training and not any(c.training for c in m.layers)
    m.train()
    assert m.layers[0].training
    m.double()
    assert all(p.dtype == np.float64 for p in m.parameters())
    out, (h, c) = m(np.zeros((2, 1, 3)))
    assert out.dtype == np.float64


@pytest.mark.parametrize("flag,value", [("bias", "False"), ("bias", 0), ("batch_first", 1), ("batch_first", "no")])
def test_non_bool_flags_are_type_errors_as_in_torch(flag, value):
    with pytest.raises(TypeError, match=f"{flag} should be of type bool"):
        torch.nn.LSTM(3, 4, **{flag: value})
    with pytest.raises(TypeError, match=f"LSTM: {flag} must be a bool, got"):
        nn.LSTM(3, 4, **{flag: value})


def test_to_takes_dtypes_and_devices_as_torch_and_lucid_do():
    m = nn.GRU(3, 4)
    assert m.to("cpu") is m and m.to(torch.device("cpu")) is m and m.to("cuda:0") is m and m.to("gpu") is m
    assert m.layers[0].weight_ih.dtype == np.float32  # a device changes nothing
    for dtype, expected in [(torch.float64, np.float64), ("float32", np.float32), (np.float64, np.float64)]:
        assert m.to(dtype) is m and all(p.dtype == expected for p in m.parameters())
    m.to("cpu", torch.float32)
    assert all(p.dtype == np.float32 for p in m.parameters())
    m.to(device="cpu", dtype="float64")
    assert all(p.dtype == np.float64 for p in m.parameters())
    for bad in [torch.float16, np.int32, "float16", 3]:
        with pytest.raises(TypeError, match="expected a dtype float32 or float64"):
            m.to(bad)
    with pytest.raises(TypeError, match="a dtype and/or a device"):
        m.to("cpu", "float32", "float64")
    with pytest.raises(ValueError, match="expected a device"):
        m.to(device="tpu")


def test_torch_module_calls_of_inference_code(rng):
    """What torch code calls on a module before inference: to(..., non_blocking=True), freezing with
    requires_grad_(False), zero_grad(); half() is refused as a dtype the kernels lack."""
    ref, ours = torch.nn.LSTM(3, 4), nn.LSTM(3, 4)
    ours.load_state_dict(ref.state_dict())
    for module in (ref, ours):
        assert module.to("cpu", torch.float64, non_blocking=True) is module
        assert module.requires_grad_(False) is module
        module.zero_grad()
    assert [p.requires_grad for p in ours.parameters()] == [p.requires_grad for p in ref.parameters()] == [False] * 4
    assert all(p.grad is None for p in ours.parameters())
    ours.layers[0].requires_grad_()
    assert all(p.requires_grad for p in ours.parameters())
    x = rng.standard_normal((5, 2, 3))
    with torch.no_grad():
        expected = ref(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(ours(x)[0].numpy(), expected, atol=1e-10, rtol=0)
    with pytest.raises(TypeError, match="expected a dtype float32 or float64 .*, got 'float16'$"):
        ours.half()


@pytest.mark.parametrize("make,shape", [(lambda: nn.GRU(3, 4, num_layers=2), (5, 2, 3)),
                                        (lambda: nn.LSTMCell(3, 4), (2, 3))], ids=["GRU", "LSTMCell"])
def test_copies_and_pickles_after_a_call(make, shape, rng):
    """The compiled kernel and packed weights stay behind; a copy computes as the original, and
    new weights given to the copy leave the original alone."""
    m = make()
    x = rng.standard_normal(shape).astype(np.float32)
    expected = m(x)
    for copied in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        for ours, theirs in zip(_flat(copied(x)), _flat(expected)):
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
        first = next(iter(copied.parameters()))
        first.data = np.zeros_like(first.data)
        for ours, theirs in zip(_flat(m(x)), _flat(expected)):
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
        assert not np.array_equal(np.asarray(_flat(copied(x))[0]), np.asarray(_flat(expected)[0]))


@pytest.mark.parametrize("make,shape", [(lambda: nn.GRU(3, 4, num_layers=2), (5, 2, 3)),
                                        (lambda: nn.LSTMCell(3, 4), (2, 3))], ids=["GRU", "LSTMCell"])
def test_parameters_stay_read_only_in_copies_and_exports(make, shape, rng):
    """A copy's parameters are read-only as the original's are (its arrays came back writable,
    and a write into one went unseen by the weights its layer had packed), and a torch tensor
    made from a Parameter (``torch.from_dlpack``, ``torch.as_tensor``, which ignore numpy's
    read-only flag) is a copy: writing it leaves the weights and the output as they were."""
    m = make()
    x = rng.standard_normal(shape).astype(np.float32)
    expected = _flat(m(x))[0].numpy().copy()
    for copied in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        for p in copied.parameters():
            with pytest.raises(ValueError, match="read-only"):
                p.data[...] = 0
    first = next(iter(m.parameters()))
    before = first.data.copy()
    for export in (torch.from_dlpack, torch.as_tensor):
        export(first).mul_(3)
    np.testing.assert_array_equal(first.data, before)
    np.testing.assert_array_equal(_flat(m(x))[0].numpy(), expected)
    with pytest.raises(BufferError, match="read-only"):
        first.__dlpack__(copy=False)


def _flat(outputs):
    return list(outputs) if isinstance(outputs, tuple) else [outputs]
