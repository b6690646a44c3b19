"""CUDA: targets, thread-bound GPU kernels, artifacts with device code for the named arch.

Without a GPU (the usual case here) the kernels' math is checked by running the same TIR on the
CPU with its thread loops made serial, and the CUDA artifact is checked for real device code;
tests that need a GPU skip with the reason.
"""

import json
import re
import shutil

import numpy as np
import pytest
import torch
import tvm
from tvm.tirx.build import split_host_device_mods

import lucid_tvm
import lucid_tvm.nn as nn
from lucid_tvm import build, runtime
from lucid_tvm.kernels import cuda
from lucid_tvm.kernels.layout import num_blocks, pack_bias, pack_weight
from lucid_tvm.kernels.spec import NUM_GATES, LayerSpec
from lucid_tvm.nn import gpu
from lucid_tvm.schedule import default_cuda_schedule

from conftest import torch_twin

HAS_GPU = runtime.cuda_device_present() and torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA device here (tvm.cuda().exist is False)")
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not on PATH")
LANES, THREADS, ROWS = 32, 64, 8


def serial(func):
    """``func`` with every thread-bound loop made a serial loop, so it builds and runs on the CPU."""
    text = re.sub(r'T\.thread_binding\(([^\n]*?), thread="[^"]+"\)', r"T.serial(\1)", func.script())
    return tvm.script.from_source(text)


def cpu_module_of_gpu_kernels(mode, hidden):
    mod = tvm.IRModule({
        "project": serial(cuda.projection(NUM_GATES[mode], hidden, "float32", LANES, THREADS, ROWS)),
        "recur": serial(cuda.recurrence(mode, hidden, "float32", LANES, THREADS)),
    })
    return tvm.tirx.build(mod, target="llvm")


def test_cuda_target_strings():
    target = build.parse_target("cuda -arch=sm_90")
    assert target.kind.name == "cuda" and build.cuda_arch(target) == "sm_90"
    assert target.host is not None and target.host.kind.name == "llvm"
    assert build.cuda_arch(build.parse_target({"kind": "cuda", "arch": "sm_80"})) == "sm_80"
    assert build.cuda_arch(build.parse_target("nvidia/nvidia-h100")).startswith("sm_90")
    with pytest.raises(ValueError, match="expected an arch like sm_90|invalid CUDA arch"):
        build.parse_target("cuda -arch=90")
    if not HAS_GPU:
        with pytest.raises(ValueError, match="no CUDA device.*cuda -arch=sm_90"):
            build.parse_target("cuda")


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_kernels_are_thread_bound(mode):
    """Device code binds threadIdx/blockIdx; the host keeps only the loop over time steps."""
    target = build.parse_target("cuda -arch=sm_90")
    spec = LayerSpec(mode, 6, 40, "float32")
    mod = build.lower_cuda_layer(spec, default_cuda_schedule(target, spec.num_gates, 40))
    mod = tvm.tirx.transform.BindTarget(target.with_host(target.host))(mod)
    pipeline, _, _ = tvm.tirx.get_default_tir_pipeline(target)
    host, devices = split_host_device_mods(pipeline(mod))
    host_loops = re.findall(r"^\s*for (\w+) in", host.script(), re.M)
    assert host_loops == ["s"], f"host code loops over {host_loops}; only the time loop belongs there"
    (device,) = devices.values()
    text = device.script()
    assert "threadIdx.x" in text and "blockIdx.x" in text
    assert {g.name_hint for g in device.functions} >= {"project_kernel", "recur_kernel"}


def _packed(ref, mode, hidden, suffix=""):
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    g = NUM_GATES[mode]
    return (pack_weight(sd[f"weight_ih_l0{suffix}"], g, hidden, LANES, "float32"),
            pack_bias(sd[f"bias_ih_l0{suffix}"], g, hidden, LANES, "float32"),
            pack_weight(sd[f"weight_hh_l0{suffix}"], g, hidden, LANES, "float32"),
            pack_bias(sd[f"bias_hh_l0{suffix}"], g, hidden, LANES, "float32"))


@pytest.mark.parametrize("mode", ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"])
def test_gpu_kernel_math_on_the_cpu(mode, rng):
    """The GPU kernels' TIR, run serially on the CPU through the project/recur contract in chunks
    (row0, t0, odd and even chunk lengths, both directions), matches torch."""
    steps, batch, inp, hidden = 7, 3, 5, 40
    ref, _ = torch_twin(mode, inp, hidden, bidirectional=True)
    module = cpu_module_of_gpu_kernels(mode, hidden)
    x = rng.standard_normal((steps, batch, inp)).astype(np.float32)
    h0 = rng.standard_normal((2, batch, hidden)).astype(np.float32)
    c0 = rng.standard_normal((2, batch, hidden)).astype(np.float32)
    is_lstm = mode == "LSTM"
    with torch.no_grad():
        hx = (torch.from_numpy(h0), torch.from_numpy(c0)) if is_lstm else torch.from_numpy(h0)
        out, state = ref(torch.from_numpy(x), hx)
    h_ref = state[0] if is_lstm else state
    t = tvm.runtime.tensor
    g, nb = NUM_GATES[mode], num_blocks(hidden, LANES)
    y = t(np.zeros((steps, batch, 2 * hidden), np.float32))
    for direction, suffix in enumerate(("", "_reverse")):
        w_ih, b_ih, w_hh, b_hh = (t(a) for a in _packed(ref, mode, hidden, suffix))
        hs = np.zeros((2, batch, hidden), np.float32)
        hs[0] = h0[direction]
        hs, cs = t(hs), t(c0[direction].copy())
        chunks = [(0, 3), (3, 7)] if direction == 0 else [(3, 7), (0, 3)]
        for t0, t1 in chunks:
            xp = t(np.zeros(((t1 - t0) * batch, nb, g, LANES), np.float32))
            module["project"](t(x.reshape(steps * batch, inp)), w_ih, b_ih, xp, t0 * batch)
            xp = t(xp.numpy().reshape(t1 - t0, batch, nb, g, LANES))
            hp = t(np.zeros((batch, nb, g, LANES), np.float32))
            state_args = (hs, cs) if is_lstm else (hs,)
            module["recur"](xp, w_hh, b_hh, *state_args, hp, y, direction * hidden, t0, direction)
        np.testing.assert_allclose(hs.numpy()[0], h_ref[direction].numpy(), rtol=0, atol=2e-5)
        if is_lstm:
            np.testing.assert_allclose(cs.numpy(), state[1][direction].numpy(), rtol=0, atol=2e-5)
    np.testing.assert_allclose(y.numpy(), out.numpy(), rtol=0, atol=2e-5)


@pytest.fixture
def gpu_kernels_on_the_cpu(monkeypatch):
    """Registers, for layers of ``(mode, hidden)`` and each input size given, the GPU kernels
    built to run serially on the CPU, and puts the GPU path's buffers on the CPU."""
    keys = []

    def register(mode, hidden, *input_sizes):
        for layer_input in input_sizes:
            entry = runtime.Compiled(cpu_module_of_gpu_kernels(mode, hidden),
                                     {"lanes": LANES, "threads": THREADS, "rows": ROWS})
            keys.append((runtime.CUDA, ("layer", mode, layer_input, hidden, "float32")))
            runtime.register(keys[-1], entry)

    monkeypatch.setattr(tvm, "cuda", lambda index=0: tvm.cpu(index))  # buffers on the CPU
    yield register
    for key in keys:
        runtime._registry.pop(key, None)
    runtime.cuda_layer_kernel.cache_clear()


def _states_and_reference(mode, ref, x, h0, c0):
    with torch.no_grad():
        out, state = ref(x, (h0, c0) if mode == "LSTM" else h0)
    return out, (state if mode == "LSTM" else (state, None))


def test_gpu_driver_on_the_cpu(gpu_kernels_on_the_cpu, rng):
    """nn.gpu.run_layers and runtime.CudaLayerKernel (packing, workspaces, views, states, both
    directions, two layers) against torch, with the GPU kernels run serially on the CPU."""
    mode, inp, hidden = "LSTM", 5, 40
    ref, ours = torch_twin(mode, inp, hidden, num_layers=2, bidirectional=True)
    gpu_kernels_on_the_cpu(mode, hidden, inp, 2 * hidden)
    x = torch.from_numpy(rng.standard_normal((6, 2, inp)).astype(np.float32))
    h0 = torch.from_numpy(rng.standard_normal((4, 2, hidden)).astype(np.float32))
    c0 = torch.from_numpy(rng.standard_normal((4, 2, hidden)).astype(np.float32))
    out, h_n, c_n = gpu.run_layers(list(ours.layers), x, h0, c0, 2, 0.0, False)
    out_ref, (h_ref, c_ref) = _states_and_reference(mode, ref, x, h0, c0)
    for got, want in ((out, out_ref), (h_n, h_ref), (c_n, c_ref)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=2e-5)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_gpu_driver_runs_a_sequence_past_the_index_range_in_chunks(monkeypatch, gpu_kernels_on_the_cpu, mode, rng):
    """The GPU kernels index with 32-bit integers too. With the limit lowered, each direction
    of a bidirectional stack runs a chunk of steps at a time (the reverse one from the last),
    chunks whose views stay 64-byte aligned, and matches torch; a step too large for a chunk
    that keeps them aligned, and weights too large, are refused."""
    inp, hidden, steps, batch = 5, 40, 37, 2
    ref, ours = torch_twin(mode, inp, hidden, num_layers=2, bidirectional=True)
    gpu_kernels_on_the_cpu(mode, hidden, inp, 2 * hidden)
    packed_width = runtime.cuda_layer_kernel(mode, inp, hidden, "float32").packed_width
    # One step of the batch: 2 x packed_width projected values (the most); the first layer's
    # input views stay aligned every 8 steps (2 rows x 5 values x 4 bytes = 40 bytes a step).
    monkeypatch.setattr(gpu, "MAX_ELEMENTS", 20 * batch * packed_width)
    steps_run = []
    run = runtime.CudaLayerKernel.run
    monkeypatch.setattr(runtime.CudaLayerKernel, "run", lambda self, packed, x, *rest: (
        steps_run.append(x.shape[0]), run(self, packed, x, *rest))[1])
    x = torch.from_numpy(rng.standard_normal((steps, batch, inp)).astype(np.float32))
    h0 = torch.from_numpy(rng.standard_normal((4, batch, hidden)).astype(np.float32))
    c0 = torch.from_numpy(rng.standard_normal((4, batch, hidden)).astype(np.float32)) if mode == "LSTM" else None
    out, h_n, c_n = gpu.run_layers(list(ours.layers), x, h0, c0, 2, 0.0, False)
    out_ref, (h_ref, c_ref) = _states_and_reference(mode, ref, x, h0, c0)
    for got, want in ((out, out_ref), (h_n, h_ref)) + (((c_n, c_ref),) if mode == "LSTM" else ()):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=2e-5)
    assert steps_run == [16, 16, 5, 5, 16, 16] * 2  # forward, then reverse, in each layer
    monkeypatch.setattr(gpu, "MAX_ELEMENTS", 7 * batch * packed_width)
    with pytest.raises(ValueError, match=rf"one step of a batch of {batch} takes {batch * packed_width} values, too "
                                         rf"many for the kernels' 32-bit indices \({7 * batch * packed_width} values "
                                         rf"an array\) in 8 steps; split the batch"):
        gpu.run_layers(list(ours.layers), x, h0, c0, 2, 0.0, False)
    monkeypatch.setattr(runtime, "MAX_ELEMENTS", 2 * hidden * packed_width - 1)  # layer 1's W_ih
    with pytest.raises(ValueError, match=rf"lucid_tvm: the GPU kernels' packed weights of {2 * hidden} x "
                                         rf"{packed_width} values outgrows the kernels' 32-bit indices"):
        torch_twin(mode, inp, hidden, num_layers=2, bidirectional=True)[1].layers[2]._packed_weights(
            runtime.cuda_layer_kernel(mode, 2 * hidden, hidden, "float32"))


def _cuda_elf_images(data):
    """Offsets of ELF images for NVIDIA GPUs (e_machine 190, EM_CUDA) inside ``data``."""
    found = []
    start = data.find(b"\x7fELF", 1)
    while start != -1:
        if int.from_bytes(data[start + 18:start + 20], "little") == 190:
            found.append(start)
        start = data.find(b"\x7fELF", start + 1)
    return found


@needs_nvcc
def test_cuda_artifact_holds_device_code_for_the_arch(tmp_path):
    layer = nn.GRU(6, 8).eval()
    path = lucid_tvm.export(layer, tmp_path / "gru", target="cuda -arch=sm_90",
                            example_input=np.zeros((4, 1, 6), np.float32))
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["target"]["kind"] == "cuda" and manifest["target"]["arch"] == "sm_90"
    (kernel,) = manifest["kernels"]
    assert kernel["identity"] == ["layer", "GRU", 6, 8, "float32"]
    data = (path / kernel["file"]).read_bytes()
    assert b".target sm_90" in data, "no PTX for sm_90 in the kernel library"
    assert _cuda_elf_images(data), "no cubin (CUDA ELF) in the kernel library"
    assert b"__global__" not in data, "the CUDA source was embedded instead of compiled code"
    if not HAS_GPU:
        with pytest.raises(lucid_tvm.ArtifactError, match="compiled for CUDA \\(sm_90\\).*no CUDA device"):
            lucid_tvm.load(path)


def test_an_arch_nvcc_cannot_build_or_no_nvcc_is_a_clear_error_before_code_generation(tmp_path, monkeypatch):
    """Raised inside TVM's code generation hook, these came back as 35 lines of TVM traceback."""
    layer, x = nn.GRU(6, 8).eval(), np.zeros((4, 1, 6), np.float32)
    monkeypatch.setattr(build, "_nvcc", lambda: ("/cuda-13/nvcc", frozenset({"compute_90", "compute_75"})))
    with pytest.raises(ValueError, match=r"this nvcc \(/cuda-13/nvcc\) cannot build sm_50: it builds compute_75, compute_90$"):
        lucid_tvm.export(layer, tmp_path / "sm_50", target="cuda -arch=sm_50", example_input=x)  # as CUDA 13's
    monkeypatch.setattr(build, "_nvcc", lambda: (None, None))
    with pytest.raises(FileNotFoundError, match="building for CUDA needs nvcc"):
        lucid_tvm.export(layer, tmp_path / "none", target="cuda -arch=sm_90", example_input=x)


def test_tracetorch_layers_do_not_export_for_cuda(tmp_path):
    from lucid_tvm import tracetorch as tt

    with pytest.raises(ValueError, match="CUDA artifacts hold lucid_tvm.nn layers"):
        lucid_tvm.export(tt.rnn.LSTM(4, 4), tmp_path / "a", target="cuda -arch=sm_90",
                         example_input=torch.zeros(2, 4))


@needs_gpu
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_artifact_runs_on_torch_cuda_tensors(mode, tmp_path, rng):
    ref, ours = torch_twin(mode, 6, 40, num_layers=2, bidirectional=True, batch_first=True)
    x = rng.standard_normal((3, 9, 6)).astype(np.float32)
    path = lucid_tvm.export(ours, tmp_path / "a", target="cuda", example_input=x)
    loaded = lucid_tvm.load(path)
    x_gpu = torch.from_numpy(x).cuda()
    out, state = loaded(x_gpu)
    assert out.is_cuda and out.device == x_gpu.device
    with torch.no_grad():
        out_ref, state_ref = ref(torch.from_numpy(x))
    np.testing.assert_allclose(out.cpu().numpy(), out_ref.numpy(), rtol=0, atol=2e-5)
    states = state if mode == "LSTM" else (state,)
    states_ref = state_ref if mode == "LSTM" else (state_ref,)
    for got, want in zip(states, states_ref):
        np.testing.assert_allclose(got.cpu().numpy(), want.numpy(), rtol=0, atol=2e-5)


@needs_gpu
@pytest.mark.parametrize("mode", ["RNN_TANH", "LSTM"])
def test_cells_on_torch_cuda_tensors_match_the_cpu(mode, rng):
    cls = {"RNN_TANH": nn.RNNCell, "LSTM": nn.LSTMCell}[mode]
    cell = cls(5, 24)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    on_gpu = cell(torch.from_numpy(x).cuda())
    on_cpu = cell(x)
    pairs = zip(on_gpu, on_cpu) if mode == "LSTM" else [(on_gpu, on_cpu)]
    for got, want in pairs:
        assert got.is_cuda
        np.testing.assert_allclose(got.cpu().numpy(), np.asarray(want), rtol=0, atol=2e-5)


