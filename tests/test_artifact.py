"""export / load: every layer kind round-trips into a fresh runtime-only process; damaged,
newer or foreign artifacts are refused with a clear error."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import lucid_tvm
import lucid_tvm.nn as nn
import lucid_tvm.tracetorch as tt

LUCID_LAYERS = {
    "RNN-relu": lambda: nn.RNN(4, 6, num_layers=2, nonlinearity="relu", batch_first=True),
    "LSTM-bi": lambda: nn.LSTM(4, 6, bidirectional=True),
    "GRU": lambda: nn.GRU(4, 6),
    "RNNBase": lambda: nn.RNNBase("GRU", 4, 6, num_layers=2),
    "RNNCell": lambda: nn.RNNCell(4, 6, nonlinearity="relu"),
    "LSTMCell": lambda: nn.LSTMCell(4, 6),
    "GRUCell-f64": lambda: nn.GRUCell(4, 6, bias=False).double(),
}
TT_LAYERS = {"SimpleRNN": lambda: tt.rnn.SimpleRNN(4, 6), "LSTM": lambda: tt.rnn.LSTM(4, 6, dim=1),
             "GRU": lambda: tt.rnn.GRU(4, 6).double()}

# A process that imports TVM's runtime only, loads the artifact and runs the saved input.
RUNTIME_ONLY = textwrap.dedent("""
    import sys, numpy as np
    import lucid_tvm
    layer = lucid_tvm.load(sys.argv[1])
    x = np.load(sys.argv[2])
    if sys.argv[3] == "tracetorch":
        import torch
        with torch.no_grad():
            outs = [layer(torch.from_numpy(x)).numpy() for _ in range(3)]
    else:
        out = layer(x)
        flat = [out[0]] + (list(out[1]) if isinstance(out[1], tuple) else [out[1]]) if isinstance(out, tuple) else [out]
        outs = [o.numpy() for o in flat]
    assert "lucid_tvm.build" not in sys.modules, "the compiler floor was imported"
    np.savez(sys.argv[4], *outs)
""")


def _run_runtime_only(path, x, face, tmp_path):
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "LUCID_TVM_CACHE_DIR": str(tmp_path / "empty-cache")}
    done = subprocess.run([sys.executable, "-c", RUNTIME_ONLY, str(path), str(tmp_path / "x.npy"), face,
                           str(tmp_path / "out.npz")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = np.load(tmp_path / "out.npz")
    return [result[f"arr_{i}"] for i in range(len(result.files))]


def _outputs(out):
    if isinstance(out, tuple):
        flat = [out[0]] + (list(out[1]) if isinstance(out[1], tuple) else [out[1]])
        return [o.numpy() for o in flat]
    return [out.numpy()]


@pytest.mark.parametrize("name", list(LUCID_LAYERS))
def test_lucid_layers_round_trip_runtime_only(name, tmp_path):
    layer = LUCID_LAYERS[name]().eval()
    cell = "Cell" in name
    x = np.random.default_rng(0).standard_normal((3, 4) if cell else (5, 3, 4)).astype(layer.dtype)
    path = lucid_tvm.export(layer, tmp_path / "artifact", example_input=x)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["layer"]["class"] == type(layer).__name__
    assert all(k["schedule_source"] == "default" for k in manifest["kernels"]) and manifest["kernels"]
    # Another sequence length and batch than the example: both may vary.
    x2 = np.random.default_rng(1).standard_normal((2, 4) if cell else (7, 2, 4)).astype(layer.dtype)
    expected = _outputs(layer(x2))
    got = _run_runtime_only(path, x2, "lucid", tmp_path)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", list(TT_LAYERS))
def test_tracetorch_layers_round_trip_runtime_only(name, tmp_path):
    layer = TT_LAYERS[name]()
    dtype = next(layer.parameters()).dtype
    shape = (3, 4, 2) if name == "LSTM" else (3, 4)
    x = torch.randn(shape, dtype=dtype)
    path = lucid_tvm.export(layer, tmp_path / "artifact", example_input=x)
    assert layer.H is None  # exporting ran the layer but left its states alone
    with torch.no_grad():
        expected = [layer(x).numpy() for _ in range(3)]
    got = _run_runtime_only(path, x.numpy(), "tracetorch", tmp_path)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_a_tracetorch_layer_holding_states_of_another_batch_exports_and_keeps_them(tmp_path):
    layer = tt.rnn.LSTM(4, 6)
    with torch.no_grad():
        layer(torch.randn(5, 4))
    states = {name: getattr(layer, name) for name in ("H", "C")}
    lucid_tvm.export(layer, tmp_path / "artifact", example_input=torch.zeros(1, 4))
    assert all(getattr(layer, name) is value for name, value in states.items())


@pytest.mark.parametrize("damage", ["deleted", "changed"])
def test_export_compiles_again_a_kernel_whose_file_went_bad_after_loading(damage, tmp_path, monkeypatch):
    """Export copies the files this process loaded its kernels from (the kernel cache's, or a
    loaded artifact's), which can be deleted or changed after loading: such a file is not copied
    (it made export fail, or shipped a library that passed the artifact's checksums and crashed
    the process that loaded it) but compiled again, when that gives the same schedule."""
    import dataclasses
    import shutil

    from lucid_tvm import runtime

    layer = nn.GRU(4, 6)
    x = np.random.default_rng(0).standard_normal((3, 2, 4)).astype(np.float32)
    expected = _outputs(layer(x))
    registered = runtime.registered

    def loaded_from_a_file_gone_bad(identity, schedule_changes=None):
        entry = registered(identity)
        moved = tmp_path / f"{len(list(tmp_path.glob('*.so')))}.so"
        shutil.copyfile(entry.path, moved)
        if damage == "deleted":
            moved.unlink()
        else:
            moved.write_bytes(moved.read_bytes()[: moved.stat().st_size // 2])
        return dataclasses.replace(entry, path=moved, schedule={**entry.schedule, **(schedule_changes or {})})

    monkeypatch.setattr(runtime, "registered", loaded_from_a_file_gone_bad)
    artifact = lucid_tvm.export(layer, tmp_path / "artifact", example_input=x)
    for got, want in zip(_run_runtime_only(artifact, x, "lucid", tmp_path), expected):
        np.testing.assert_array_equal(got, want)
    monkeypatch.setattr(runtime, "registered", lambda identity: loaded_from_a_file_gone_bad(identity, {"rows": 99}))
    with pytest.raises(lucid_tvm.ArtifactError, match="has been deleted or changed, and compiling it again "
                                                      "here gives another schedule"):
        lucid_tvm.export(layer, tmp_path / "other", example_input=x)


@pytest.fixture
def artifact(tmp_path):
    layer = nn.GRU(4, 6)
    return lucid_tvm.export(layer, tmp_path / "artifact", example_input=np.zeros((2, 1, 4), np.float32))


def test_a_kernel_missing_from_the_artifact_is_named_on_a_runtime_only_machine(artifact, tmp_path):
    script = textwrap.dedent("""
        import sys, numpy as np, lucid_tvm
        layer = lucid_tvm.load(sys.argv[1]).double()  # float64 kernels: not in the artifact
        try:
            layer(np.zeros((2, 1, 4)))
        except ImportError as error:
            print(error)
    """)
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "LUCID_TVM_CACHE_DIR": str(tmp_path / "empty-cache")}
    done = subprocess.run([sys.executable, "-c", script, str(artifact)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "needs a kernel that no loaded artifact holds" in done.stdout


def test_export_on_a_runtime_only_install_says_it_needs_the_compiler(tmp_path):
    script = textwrap.dedent("""
        import sys, numpy as np, lucid_tvm, lucid_tvm.nn as nn
        try:
            lucid_tvm.export(nn.GRU(2, 3), sys.argv[1], example_input=np.zeros((1, 1, 2), np.float32))
        except ImportError as error:
            print(error)
    """)
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "LUCID_TVM_CACHE_DIR": str(tmp_path / "empty-cache")}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "a")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "export compiles kernels and needs TVM's compiler" in done.stdout  # not an import of TCol failing


def test_changed_files_are_refused(artifact):
    kernel = next((artifact / "kernels").glob("*.so"))
    data = bytearray(kernel.read_bytes())
    data[len(data) // 2] ^= 0xFF
    kernel.write_bytes(bytes(data))
    with pytest.raises(lucid_tvm.ArtifactError, match=r"kernels/0.so was changed after export"):
        lucid_tvm.load(artifact)


def test_changed_weights_are_refused(artifact):
    np.savez(artifact / "weights.npz", nothing=np.zeros(1))
    with pytest.raises(lucid_tvm.ArtifactError, match="weights.npz was changed after export"):
        lucid_tvm.load(artifact)


def test_missing_files_are_refused(artifact, tmp_path):
    (artifact / "weights.npz").unlink()
    with pytest.raises(lucid_tvm.ArtifactError, match="weights.npz is missing"):
        lucid_tvm.load(artifact)
    with pytest.raises(lucid_tvm.ArtifactError, match="manifest.json is missing"):
        lucid_tvm.load(tmp_path / "nowhere")


def _edit_manifest(artifact, **changes):
    manifest = json.loads((artifact / "manifest.json").read_text())
    for key, value in changes.items():
        if key == "machine":
            manifest["target"]["machine"] = value
        elif key == "flags":
            manifest["target"]["cpu_flags"] = value
        else:
            manifest[key] = value
    (artifact / "manifest.json").write_text(json.dumps(manifest))


def test_a_manifest_edited_out_of_shape_is_refused(artifact):
    """Users edit the manifest (docs/deployment.md: a kernel linked on the device). Anything
    ``load`` would trip over, or a kernel it would load without its checksum, is an ArtifactError."""
    original = json.loads((artifact / "manifest.json").read_text())
    kernel = original["kernels"][0]["file"]
    unchecked = {k: v for k, v in original["files"].items() if k != kernel}
    def without(mapping, key):
        return {k: v for k, v in mapping.items() if k != key}

    first = original["kernels"][0]
    edits = [("files", [kernel], "'files' is not a map"), ("target", "llvm", "'target' is not an object"),
             ("target", without(original["target"], "string"), "'target' is not an object with its string"),
             ("shapes", {"example_input": [2, 1, 4]}, "'shapes' lacks"),
             ("layer", {**original["layer"], "class": "SimpleRNN"}, "'layer' is not one of"),
             ("layer", without(original["layer"], "training"), "'layer' is not one of .* training mode"),
             ("kernels", [{"file": kernel}], "'kernels' is not a list of kernels"),
             ("kernels", [{**first, "schedule": without(first["schedule"], "lanes")}], "a layer or GEMM kernel's "
              "schedule lacks its lanes")]
    for key, value, said in edits:  # each was a KeyError from load, info or the first call
        _edit_manifest(artifact, **{key: value})
        with pytest.raises(lucid_tvm.ArtifactError, match=f"manifest.json: {said}.*; export the layer again"):
            lucid_tvm.load(artifact)
        _edit_manifest(artifact, **{key: original[key]})
    _edit_manifest(artifact, files=unchecked)
    (artifact / kernel).write_bytes((artifact / kernel).read_bytes()[:1000])  # loaded unchecked, it crashed
    with pytest.raises(lucid_tvm.ArtifactError, match=f"{kernel} not among its checksummed 'files'"):
        lucid_tvm.load(artifact)
    _edit_manifest(artifact, files=original["files"])
    (artifact / kernel).unlink()
    (artifact / kernel).mkdir()
    with pytest.raises(lucid_tvm.ArtifactError, match=rf"{kernel} is missing \(a directory is there\)"):
        lucid_tvm.load(artifact)


def test_a_layer_the_manifest_cannot_make_is_refused(artifact):
    original = json.loads((artifact / "manifest.json").read_text())
    _edit_manifest(artifact, layer={**original["layer"], "config": {"size": 4}})
    with pytest.raises(lucid_tvm.ArtifactError, match=r"its manifest's layer GRU\(\{'size': 4\}\) cannot be made "
                                                      "with its weights: .*unexpected keyword argument 'size'"):
        lucid_tvm.load(artifact)


def test_newer_format_is_refused(artifact):
    _edit_manifest(artifact, format=99)
    with pytest.raises(lucid_tvm.ArtifactError, match="format 99, newer than"):
        lucid_tvm.load(artifact)


# 1: kernels that assume 64-byte aligned input and output; 2: layer modules without gather; 3: without
# project_first, and recur without hp_ready.
@pytest.mark.parametrize("old", [1, 2, 3])
def test_older_format_is_refused(artifact, old):
    _edit_manifest(artifact, format=old)
    with pytest.raises(lucid_tvm.ArtifactError, match=f"format {old}, from an older lucid_tvm.*export the layer again"):
        lucid_tvm.load(artifact)


def test_format_4_loads_but_for_tracetorch_lstm_and_gru(artifact, tmp_path):
    """Format 5 changed only the tracetorch LSTM and GRU kernels (their gate rows became 3-D)."""
    x = np.random.default_rng(0).standard_normal((3, 1, 4)).astype(np.float32)
    expected = lucid_tvm.load(artifact)(x)[0].data
    _edit_manifest(artifact, format=4)
    np.testing.assert_array_equal(lucid_tvm.load(artifact)(x)[0].data, expected)
    for name in ("LSTM", "GRU", "SimpleRNN"):
        path = lucid_tvm.export(getattr(tt.rnn, name)(3, 5), tmp_path / name, example_input=torch.zeros(2, 3))
        _edit_manifest(path, format=4)
        if name == "SimpleRNN":
            with torch.no_grad():
                assert lucid_tvm.load(path)(torch.ones(2, 3)).shape == (2, 5)
        else:
            with pytest.raises(lucid_tvm.ArtifactError, match="format 4, from an older lucid_tvm"):
                lucid_tvm.load(path)


def test_other_machine_is_refused(artifact):
    _edit_manifest(artifact, machine="aarch64")
    with pytest.raises(lucid_tvm.ArtifactError, match="compiled for aarch64"):
        lucid_tvm.load(artifact)


def test_missing_cpu_features_are_refused(artifact):
    _edit_manifest(artifact, flags=["avx512_made_up", "sse2"])
    with pytest.raises(lucid_tvm.ArtifactError, match="avx512_made_up"):
        lucid_tvm.load(artifact)


@pytest.mark.parametrize("arch,here,refused", [("sm_90", "9.0", None), ("sm_90", "10.0", None),
                                               ("sm_90", "8.6", "too old"), ("sm_90a", "9.0", None),
                                               ("sm_90a", "10.0", "runs on compute capability 9.0 only")])
def test_gpu_architecture_checks(arch, here, refused, monkeypatch):
    """sm_XX code runs on later GPUs; sm_XXa (the h100 tag's sm_90a) on that architecture only."""
    monkeypatch.setattr(lucid_tvm.runtime, "cuda_device_present", lambda: True)
    monkeypatch.setattr(lucid_tvm.artifact.tvm, "cuda", lambda index=0: type("GPU", (), {"compute_version": here}))
    if refused is None:
        lucid_tvm.artifact._check_gpu("art", {"arch": arch})
    else:
        with pytest.raises(lucid_tvm.ArtifactError, match=refused):
            lucid_tvm.artifact._check_gpu("art", {"arch": arch})


def test_corrupt_manifest_is_refused(artifact):
    manifest = json.loads((artifact / "manifest.json").read_text())
    del manifest["target"], manifest["files"]
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(lucid_tvm.ArtifactError, match="manifest.json lacks target, files"):
        lucid_tvm.load(artifact)
    (artifact / "manifest.json").write_text("{not json")
    with pytest.raises(lucid_tvm.ArtifactError, match="cannot be read"):
        lucid_tvm.load(artifact)


def test_files_are_readable_by_others_and_replaced_not_rewritten(artifact, tmp_path):
    """Exported files get the umask's mode (mkstemp's 0600 left the manifest unreadable to other
    users), and exporting into an artifact a process has loaded replaces its files: that process
    keeps its mapped kernels, and a loaded layer exported into its own directory works."""
    for file in ("manifest.json", "weights.npz", "kernels/0.so"):
        assert (artifact / file).stat().st_mode & 0o777 == 0o666 & ~lucid_tvm.files._umask(), file
    script = textwrap.dedent("""
        import sys, numpy as np, lucid_tvm, lucid_tvm.nn as nn
        path, x = sys.argv[1], np.ones((3, 2, 4), np.float32)
        loaded = lucid_tvm.load(path)
        before = loaded(x)[0].numpy()
        lucid_tvm.export(nn.GRU(4, 9), path, example_input=x)  # another layer's kernel as kernels/0.so
        assert np.array_equal(loaded(x)[0].numpy(), before)
        lucid_tvm.export(loaded, path, example_input=x)  # the loaded layer into its own directory
        assert np.array_equal(lucid_tvm.load(path)(x)[0].numpy(), before)
    """)
    done = subprocess.run([sys.executable, "-c", script, str(artifact)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_export_arguments():
    with pytest.raises(ValueError, match="example_input is required"):
        lucid_tvm.export(nn.GRU(2, 3), "/tmp/unused")
    with pytest.raises(ValueError, match=r"example input of shape \(1, 0, 2\) ran no kernel"):
        lucid_tvm.export(nn.GRU(2, 3), "/tmp/unused", example_input=np.zeros((1, 0, 2), np.float32))
    with pytest.raises(ValueError, match="expected an llvm .CPU. or cuda target, got opencl"):
        lucid_tvm.export(nn.GRU(2, 3), "/tmp/unused", target="opencl", example_input=np.zeros((1, 1, 2)))
    with pytest.raises(ValueError, match="expected options like -key=value"):
        lucid_tvm.export(nn.GRU(2, 3), "/tmp/unused", target="llvm mcpu", example_input=np.zeros((1, 1, 2)))
    with pytest.raises(ValueError, match="-num-cores takes a whole number, got 'abc'"):  # it was int()'s message
        lucid_tvm.export(nn.GRU(2, 3), "/tmp/unused", target="llvm -num-cores=abc", example_input=np.zeros((1, 1, 2)))
    with pytest.raises(ValueError, match="LLVM knows no CPU 'znver33'"):
        lucid_tvm.export(nn.GRU(2, 3), "/tmp/unused", target="llvm -mcpu=znver33", example_input=np.zeros((1, 1, 2)))
    with pytest.raises(TypeError, match="expected a lucid_tvm.nn or lucid_tvm.tracetorch"):
        lucid_tvm.export(torch.nn.GRU(2, 3), "/tmp/unused", example_input=np.zeros((1, 1, 2)))


def _elf_machines(path):
    """ELF e_machine of the file, or of every object in a tar of objects (which also holds the
    barrier's source, to link with them)."""
    import tarfile

    def machine(data):
        assert data[:4] == b"\x7fELF"
        return int.from_bytes(data[18:20], "little")

    if str(path).endswith(".tar"):
        with tarfile.open(path) as archive:
            members = [m for m in archive.getmembers() if m.isfile()]
            assert "barrier.cc" in {Path(m.name).name for m in members}
            return {machine(archive.extractfile(m).read()) for m in members if m.name.endswith(".o")}
    return {machine(path.read_bytes())}


def test_cross_compile_for_aarch64(tmp_path):
    layer = nn.LSTM(4, 6)
    # Without a core count the kernels would run on one thread there: said, not silent.
    with pytest.warns(UserWarning, match="names no core count, so its kernels run on one thread"):
        path = lucid_tvm.export(layer, tmp_path / "arm", target="llvm -mtriple=aarch64-linux-gnu -mattr=+neon",
                                example_input=np.zeros((2, 1, 4), np.float32))
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["target"]["machine"] == "aarch64"
    (kernel,) = manifest["kernels"]
    assert kernel["schedule"]["lanes"] == 4  # 128-bit NEON vectors of float32
    assert _elf_machines(path / kernel["file"]) == {183}  # EM_AARCH64
    if kernel["file"].endswith(".tar"):
        assert "link them" in kernel["note"]
    with pytest.raises(lucid_tvm.ArtifactError, match="compiled for aarch64"):
        lucid_tvm.load(path)


def test_host_target_strings(tmp_path):
    from lucid_tvm.build import host_target, parse_target

    assert str(parse_target("llvm")) == str(host_target())
    target = parse_target("llvm -mcpu=znver3 -num-cores=2")
    assert target.attrs["mcpu"] == "znver3" and int(target.attrs["num-cores"]) == 2
    assert parse_target("llvm -mtriple=aarch64-linux-gnu -mattr=+neon").attrs["mattr"][0] == "+neon"
    assert parse_target("cuda -arch=sm_90").attrs["arch"] == "sm_90"
    assert parse_target({"kind": "llvm", "mcpu": "znver3"}).attrs["mcpu"] == "znver3"
    # An x86 artifact for a named CPU: compiled for that -mcpu, loadable here (same machine).
    layer = nn.GRU(4, 6).eval()
    x = np.random.default_rng(0).standard_normal((3, 2, 4)).astype(np.float32)
    path = lucid_tvm.export(layer, tmp_path / "x86", target="llvm -mcpu=x86-64-v3 -num-cores=2", example_input=x)
    assert any(k["schedule"]["cores"] == 2 for k in json.loads((path / "manifest.json").read_text())["kernels"])
    expected = layer(x)[0].numpy()
    loaded = lucid_tvm.load(path)
    assert lucid_tvm.runtime.layer_kernel("GRU", 4, 6, "float32").lanes == 8  # AVX2's, not this CPU's
    np.testing.assert_allclose(loaded(x)[0].numpy(), expected, atol=2e-6, rtol=0)
    np.testing.assert_allclose(layer(x)[0].numpy(), expected, atol=2e-6, rtol=0)  # repacked for it
    # Batch 1: one step's workspace (3 gates x 8 lanes) is not a multiple of 64 bytes.
    np.testing.assert_allclose(loaded(x[:, :1])[0].numpy(), expected[:, :1], atol=2e-6, rtol=0)
    # It needs what LLVM uses for that CPU (AVX2, FMA): a CPU without them is refused.
    flags = json.loads((path / "manifest.json").read_text())["target"]["cpu_flags"]
    assert {"avx2", "fma"} <= set(flags) and "avx512f" not in flags
    without = [flag for flag in lucid_tvm.artifact._cpu_flags() if flag not in ("avx2", "fma")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lucid_tvm.artifact, "_cpu_flags", lambda: without)
        with pytest.raises(lucid_tvm.ArtifactError, match="compiled for a CPU with avx2, fma"):
            lucid_tvm.load(path)


def test_the_host_target_uses_no_feature_this_cpu_lacks():
    """A VM may hide features of its CPU model (a Zen 4 VM without AVX-512 still names its CPU
    znver4): kernels compiled for the bare model died of an illegal instruction at their first
    AVX-512 one. The host target turns such features off, and only those."""
    from tvm.target import codegen

    from lucid_tvm.build import features_missing, host_cpu_features, host_target, parse_target

    here = host_cpu_features()
    enabled = {str(name) for name in codegen.llvm_get_cpu_features(host_target())}
    assert not {name for name in enabled if here.get(name) is False}
    assert "avx2" in enabled or not here.get("avx2")
    # The rule itself, for a CPU model this machine need not be.
    znver4 = parse_target("llvm -mcpu=znver4")
    assert "avx512f" in features_missing(znver4, {"avx512f": False, "avx2": True})
    assert "avx2" not in features_missing(znver4, {"avx512f": False, "avx2": True})
    assert features_missing(znver4, {}) == []
    assert features_missing(parse_target("llvm -mcpu=znver4 -mattr=-avx512f"), {"avx512f": False}) == []
