"""The lucid-tvm command: compile from a weights file, info, bench."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import tracetorch as ref_tt

import lucid_tvm
from lucid_tvm.cli import main


@pytest.mark.parametrize("suffix", [".npz", ".pt", ".safetensors", ".bfloat16.pt"])
def test_compile_from_torch_weights_round_trip(tmp_path, suffix, capsys):
    torch.manual_seed(0)
    ref = torch.nn.LSTM(5, 7, num_layers=2, batch_first=True).eval()
    weights = tmp_path / f"lstm{suffix}"
    if suffix == ".npz":
        np.savez(weights, **{k: v.numpy() for k, v in ref.state_dict().items()})
    elif suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file({k: v.numpy() for k, v in ref.state_dict().items()}, str(weights))
    elif suffix == ".bfloat16.pt":  # numpy has no bfloat16: read as float32, as load_state_dict does
        ref = ref.to(torch.bfloat16)
        torch.save(ref.state_dict(), weights)
        ref = ref.float()
    else:
        torch.save(ref.state_dict(), weights)
    out = tmp_path / "artifact"
    assert main(["compile", "LSTM", "--input-size", "5", "--hidden-size", "7", "--num-layers", "2",
                 "--batch-first", "--weights", str(weights), "--example-shape", "2,9,5", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[1/3]" in printed and "[3/3] wrote" in printed
    layer = lucid_tvm.load(out)
    x = torch.randn(3, 4, 5)
    with torch.no_grad():
        expected = ref(x)[0].numpy()
    np.testing.assert_allclose(layer(x)[0].numpy(), expected, atol=2e-5, rtol=0)

    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    if suffix == ".npz":  # `lucid-tvm info X | head -1`: a reader that stops early is no error
        reader = subprocess.Popen([sys.executable, "-m", "lucid_tvm.cli", "info", str(out)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        reader.stdout.close()
        assert reader.wait(timeout=120) == 0 and reader.stderr.read() == b""
        reader.stderr.close()
    assert "lucid.nn LSTM(input_size=5, hidden_size=7" in info and "checksums verified" in info
    assert main(["bench", str(out), "--calls", "5"]) == 0
    assert "ms per call" in capsys.readouterr().out


def test_compile_tracetorch_layer(tmp_path):
    torch.manual_seed(0)
    ref = ref_tt.rnn.GRU(4, 6)
    weights = tmp_path / "gru.pt"
    torch.save(ref.state_dict(), weights)
    out = tmp_path / "artifact"
    assert main(["compile", "GRU", "--face", "tracetorch", "--input-size", "4", "--hidden-size", "6",
                 "--weights", str(weights), "--example-shape", "3,4", "-o", str(out)]) == 0
    layer = lucid_tvm.load(out)
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref(x), atol=1e-5, rtol=0)


def test_compile_tracetorch_float64_without_weights(tmp_path):
    out = tmp_path / "artifact"
    assert main(["compile", "SimpleRNN", "--face", "tracetorch", "--input-size", "4", "--hidden-size", "6",
                 "--dtype", "float64", "--example-shape", "3,4", "-o", str(out)]) == 0
    with torch.no_grad():
        assert lucid_tvm.load(out)(torch.zeros(3, 4, dtype=torch.float64)).dtype == torch.float64


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err
    compile_gru = ["compile", "GRU", "--input-size", "4", "--hidden-size", "6", "--example-shape", "3,1,4"]
    assert main(compile_gru + ["--weights", str(tmp_path / "nope.npz"), "-o", str(tmp_path / "a")]) == 2
    assert "does not exist" in capsys.readouterr().err
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    assert main(compile_gru + ["--weights", str(tmp_path / "list.pt"), "-o", str(tmp_path / "a")]) == 2
    assert "expected a state dict of tensors, got list" in capsys.readouterr().err
    torch.save({"model": torch.nn.GRU(4, 6).state_dict(), "epoch": 3}, tmp_path / "checkpoint.pt")
    assert main(compile_gru + ["--weights", str(tmp_path / "checkpoint.pt"), "-o", str(tmp_path / "a")]) == 2
    assert "got dict (its entries ['model'] are dicts: save the model's state dict alone)" in capsys.readouterr().err
    torch.save(torch.nn.GRU(4, 6), tmp_path / "module.pt")
    assert main(compile_gru + ["--weights", str(tmp_path / "module.pt"), "-o", str(tmp_path / "a")]) == 2
    assert "expected a state dict of tensors" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(compile_gru + ["-o", str(tmp_path / "file")]) == 2
    assert "lucid-tvm compile:" in capsys.readouterr().err
    assert main(["compile", "GRU", "--face", "tracetorch", "--input-size", "4", "--hidden-size", "6",
                 "--num-layers", "2", "--example-shape", "3,4", "-o", str(tmp_path / "a")]) == 2
    assert "--num-layers: not an option of a tracetorch GRU" in capsys.readouterr().err


def test_bad_layers_weights_and_numbers_are_reported_with_exit_code_2(tmp_path, capsys):
    tracetorch_gru = ["compile", "GRU", "--face", "tracetorch", "--input-size", "4", "--hidden-size", "6",
                      "--example-shape", "3,4", "-o", str(tmp_path / "a")]
    torch.save(torch.nn.GRU(4, 6).state_dict(), tmp_path / "torch_gru.pt")  # torch's keys, not tracetorch's
    torch.save(ref_tt.rnn.GRU(4, 8).state_dict(), tmp_path / "tt_gru_8.pt")  # tracetorch's, of other sizes
    for weights, said in (("torch_gru.pt", "Missing key"), ("tt_gru_8.pt", "size mismatch")):
        assert main(tracetorch_gru + ["--weights", str(tmp_path / weights)]) == 2
        err = capsys.readouterr().err
        assert f"lucid-tvm compile: weights file {tmp_path / weights} does not fit a tracetorch GRU(4, 6)" in err
        assert said in err and "Traceback" not in err
    for layer, face in (("Foo", "lucid"), ("SimpleRNN", "lucid"), ("RNNCell", "tracetorch")):
        assert main(["compile", layer, "--face", face, "--input-size", "4", "--hidden-size", "6",
                     "--example-shape", "3,4", "-o", str(tmp_path / "a")]) == 2
        assert f"lucid-tvm compile: {'tracetorch' if face == 'tracetorch' else 'lucid.nn'} layers are" in \
            capsys.readouterr().err
    for layer, options, said in (("LSTMCell", ["--num-layers", "3", "--batch-first"], "--num-layers, --batch-first"),
                                 ("LSTM", ["--nonlinearity", "relu", "--mode", "GRU", "--dim", "0"],
                                  "--nonlinearity, --mode, --dim"),
                                 ("GRU --face tracetorch", ["--no-bias"], "--no-bias")):
        assert main(["compile", *layer.split(), *options, "--input-size", "4", "--hidden-size", "6",
                     "--example-shape", "3,4", "-o", str(tmp_path / "a")]) == 2  # they were dropped, rc 0
        face = "a tracetorch" if "tracetorch" in layer else "lucid.nn's"
        assert f"lucid-tvm compile: {said}: not an option of {face} {layer.split()[0]}" in capsys.readouterr().err
    for option, value in (("--example-shape", "3,x"), ("--example-shape", "3,-1"), ("--example-shape", "")):
        with pytest.raises(SystemExit) as exit_:
            main(["compile", "GRU", "--input-size", "4", "--hidden-size", "6", option, value, "-o", "a"])
        assert exit_.value.code == 2
        assert f"expected comma-separated sizes such as 25,1,10, got {value!r}" in capsys.readouterr().err
    for calls in ("0", "-3", "x"):
        with pytest.raises(SystemExit) as exit_:
            main(["bench", str(tmp_path), "--calls", calls])
        assert exit_.value.code == 2
        assert f"--calls: expected a whole number of at least 1, got {calls!r}" in capsys.readouterr().err


def test_console_script_is_installed():
    done = subprocess.run([sys.executable, "-m", "lucid_tvm.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "compile" in done.stdout and "info" in done.stdout
