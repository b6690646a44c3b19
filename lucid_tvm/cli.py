"""The ``lucid-tvm`` command: compile a layer into an artifact, inspect it, time it.

    lucid-tvm compile LSTM --input-size 10 --hidden-size 8 --num-layers 2 \\
        --weights lstm.pt --example-shape 25,1,10 --target "llvm" -o lstm-artifact
    lucid-tvm info lstm-artifact
    lucid-tvm bench lstm-artifact --calls 100
    lucid-tvm tune LSTM --input-size 512 --hidden-size 512 --batch 64 --seq-len 25 --trials 32

Weights come from a numpy ``.npz``, a ``.safetensors`` file or a torch ``state_dict`` (``.pt``),
with our keys or PyTorch's / tracetorch's.
"""

import argparse
import json
import os
import pickle
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from .artifact import LAYER_CLASSES
from .kernels.spec import MODES
from .tensor import to_numpy

LUCID_CLASSES, TRACETORCH_CLASSES = LAYER_CLASSES["lucid.nn"], LAYER_CLASSES["tracetorch"]


def _say(message):
    print(message, flush=True)


def read_weights(path):
    """A state dict of numpy arrays from .npz, .safetensors or a torch .pt / .pth file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    if path.suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise ImportError("reading .safetensors needs the safetensors package: pip install safetensors") from None
        return load_file(str(path))
    if path.suffix in (".pt", ".pth"):
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:  # e.g. a whole pickled module, which weights_only refuses
            raise ValueError(f"weights file {path}: expected a state dict of tensors ({err})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            hint = ""
            if isinstance(state, dict):  # a training checkpoint, say {"model": state_dict, "epoch": 3}
                nested = [key for key, value in state.items() if isinstance(value, dict)]
                hint = f" (its entries {nested} are dicts: save the model's state dict alone)" if nested else ""
            raise ValueError(f"weights file {path}: expected a state dict of tensors, got {type(state).__name__}{hint}")
        return {key: to_numpy(value, f"weights file {path}: {key}", kinds="fiub") for key, value in state.items()}
    raise ValueError(f"weights file {path}: expected .npz, .safetensors, .pt or .pth")


def _make_layer(args):
    _refuse_options_that_do_not_apply(args)
    if args.face == "tracetorch":
        import lucid_tvm.tracetorch as tt

        layer = getattr(tt.rnn, args.layer)(args.input_size, args.hidden_size, -1 if args.dim is None else args.dim)
        return layer.double() if args.dtype == "float64" else layer
    import lucid_tvm.nn as nn

    config = {"input_size": args.input_size, "hidden_size": args.hidden_size, "bias": not args.no_bias}
    if "Cell" not in args.layer:
        config.update(num_layers=1 if args.num_layers is None else args.num_layers,
                      batch_first=args.batch_first, bidirectional=args.bidirectional)
    if args.layer in ("RNN", "RNNCell"):
        config["nonlinearity"] = args.nonlinearity or "tanh"
    if args.layer == "RNNBase":
        config["mode"] = args.mode or "LSTM"
    layer = getattr(nn, args.layer)(**config).eval()
    return layer.double() if args.dtype == "float64" else layer


def _refuse_options_that_do_not_apply(args):
    """An option the layer has no use for is an error, not dropped: the artifact would be another
    layer than the one asked for (``LSTMCell --num-layers 3`` made one cell)."""
    classes = TRACETORCH_CLASSES if args.face == "tracetorch" else LUCID_CLASSES
    if args.layer not in classes:
        raise ValueError(f"{'tracetorch' if args.face == 'tracetorch' else 'lucid.nn'} layers are {classes}, "
                         f"got {args.layer}")
    sequence = args.face == "lucid" and "Cell" not in args.layer
    applies = {"--num-layers": sequence, "--batch-first": sequence, "--bidirectional": sequence,
               "--no-bias": args.face == "lucid", "--nonlinearity": args.layer in ("RNN", "RNNCell"),
               "--mode": args.layer == "RNNBase", "--dim": args.face == "tracetorch"}
    given = {"--num-layers": args.num_layers is not None, "--batch-first": args.batch_first,
             "--bidirectional": args.bidirectional, "--no-bias": args.no_bias,
             "--nonlinearity": args.nonlinearity is not None, "--mode": args.mode is not None,
             "--dim": args.dim is not None}
    stray = [option for option in applies if given[option] and not applies[option]]
    if stray:
        face = "a tracetorch" if args.face == "tracetorch" else "lucid.nn's"
        raise ValueError(f"{', '.join(stray)}: not an option of {face} {args.layer}")


def compile_command(args):
    import lucid_tvm

    layer = _make_layer(args)
    if args.weights:
        _say(f"[1/3] loading weights from {args.weights}")
        weights = read_weights(args.weights)
        if args.face == "tracetorch":
            import torch

            try:
                layer.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()})
            except RuntimeError as err:  # torch's: missing or unexpected keys, other shapes
                raise ValueError(f"weights file {args.weights} does not fit a tracetorch {args.layer}"
                                 f"({args.input_size}, {args.hidden_size}): {err}") from None
        else:
            layer.load_state_dict(weights)
    else:
        _say("[1/3] no --weights: exporting the layer's random initial weights")
    example = np.zeros(args.example_shape, dtype=args.dtype)
    if args.face == "tracetorch":
        import torch

        example = torch.from_numpy(example)
    _say(f"[2/3] compiling kernels for target {args.target!r}"
         + (" (cached kernels load at once)" if args.target.split() == ["llvm"] else ""))
    started = time.perf_counter()
    path = lucid_tvm.export(layer, args.output, target=args.target, example_input=example)
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    _say(f"[3/3] wrote {path}: {len(manifest['kernels'])} kernel module(s) in "
         f"{time.perf_counter() - started:.1f} s")
    for kernel in manifest["kernels"]:
        if "note" in kernel:
            _say(f"      note: {kernel['file']}: {kernel['note']}")


def info_command(args):
    from lucid_tvm.artifact import read_manifest, verify_files

    path = Path(args.artifact)
    manifest = read_manifest(path)
    layer = manifest["layer"]
    _say(f"{path}: {layer['face']} {layer['class']}({', '.join(f'{k}={v!r}' for k, v in layer['config'].items())})")
    _say(f"  dtype {manifest['dtype']}, target {manifest['target']['string']} ({manifest['target']['machine']})")
    _say(f"  built by lucid_tvm {manifest.get('lucid_tvm', '?')} with TVM {manifest.get('tvm', '?')}, "
         f"manifest format {manifest['format']}")
    shapes = manifest["shapes"]
    _say(f"  example input {tuple(shapes['example_input'])}; fixed {shapes['fixed']}; varying: {', '.join(shapes['varying'])}")
    for kernel in manifest["kernels"]:
        _say(f"  kernel {kernel['file']}: {tuple(kernel['identity'])}, schedule {kernel['schedule']} "
             f"({kernel.get('schedule_source', 'source not recorded')})")
    verify_files(path, manifest)
    _say(f"  {len(manifest['files'])} files, checksums verified")


def bench_command(args):
    import lucid_tvm
    from lucid_tvm.artifact import read_manifest

    layer = lucid_tvm.load(args.artifact)
    manifest = read_manifest(Path(args.artifact))
    shape = tuple(manifest["shapes"]["example_input"])
    x = np.random.default_rng(0).standard_normal(shape).astype(manifest["dtype"])
    if manifest["layer"]["face"] == "tracetorch":
        import torch

        x = torch.from_numpy(x)
    times = []
    for i in range(args.calls + 3):
        started = time.perf_counter()
        layer(x)
        if i >= 3:  # warm-up calls are not counted
            times.append(time.perf_counter() - started)
    _say(f"{args.artifact}: input {shape}, median {statistics.median(times) * 1e3:.3f} ms per call "
         f"over {args.calls} calls (min {min(times) * 1e3:.3f}, max {max(times) * 1e3:.3f})")


def rpc_runner(tracker, key):
    """The meta_schedule RPCConfig of ``--rpc-tracker HOST:PORT --rpc-key KEY``, or None for
    neither (measure here)."""
    if tracker is None and key is None:
        return None
    if key is not None and tracker is None:
        raise ValueError("--rpc-key needs --rpc-tracker HOST:PORT (without it the kernels would be timed here)")
    from tvm.s_tir.meta_schedule.runner import RPCConfig

    host, _, port = tracker.rpartition(":")
    if not host or not port.isdigit() or not key:
        raise ValueError("--rpc-tracker takes HOST:PORT and needs --rpc-key (the device key)")
    return RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=key, session_timeout_sec=60)


def tune_command(args):
    from lucid_tvm import tuning

    runner = rpc_runner(args.rpc_tracker, args.rpc_key)
    directory = tuning.tune(args.mode, args.input_size, args.hidden_size, args.batch, args.seq_len,
                            dtype=args.dtype, target=args.target, trials=args.trials, runner=runner,
                            num_layers=args.num_layers, bidirectional=args.bidirectional,
                            retune=args.retune, say=_say)
    _say(f"database: {directory}")


def _shape(text):
    """``--example-shape``: comma-separated sizes."""
    try:
        shape = tuple(int(n) for n in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes such as 25,1,10, got {text!r}")
    return shape


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(prog="lucid-tvm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    compile_parser = commands.add_parser("compile", help="a layer configuration and weights -> an artifact")
    compile_parser.add_argument("layer", help=f"lucid.nn: {', '.join(LUCID_CLASSES)}; tracetorch: {', '.join(TRACETORCH_CLASSES)}")
    compile_parser.add_argument("--face", choices=["lucid", "tracetorch"], default="lucid")
    compile_parser.add_argument("--input-size", type=int, required=True, help="input_size / in_features")
    compile_parser.add_argument("--hidden-size", type=int, required=True, help="hidden_size / out_features")
    compile_parser.add_argument("--num-layers", type=int, help="sequence modules (default 1)")
    compile_parser.add_argument("--nonlinearity", choices=["tanh", "relu"], help="RNN, RNNCell (default tanh)")
    compile_parser.add_argument("--mode", choices=MODES, help="RNNBase (default LSTM)")
    compile_parser.add_argument("--no-bias", action="store_true")
    compile_parser.add_argument("--batch-first", action="store_true")
    compile_parser.add_argument("--bidirectional", action="store_true")
    compile_parser.add_argument("--dim", type=int, help="tracetorch: the feature axis (default -1)")
    compile_parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    compile_parser.add_argument("--weights", help=".npz, .safetensors or torch .pt state dict")
    compile_parser.add_argument("--example-shape", type=_shape, required=True,
                                help="comma-separated shape of an example input, e.g. 25,1,10")
    compile_parser.add_argument("--target", default="llvm",
                                help='"llvm" (this CPU), "llvm -mcpu=znver3 -num-cores=8", '
                                     '"llvm -mtriple=aarch64-linux-gnu -mattr=+neon -num-cores=4"')
    compile_parser.add_argument("-o", "--output", required=True, help="artifact directory to write")
    compile_parser.set_defaults(run=compile_command)

    info_parser = commands.add_parser("info", help="what an artifact holds; verifies its checksums")
    info_parser.add_argument("artifact")
    info_parser.set_defaults(run=info_command)

    bench_parser = commands.add_parser("bench", help="load an artifact and time calls on its example shape")
    bench_parser.add_argument("artifact")
    bench_parser.add_argument("--calls", type=_positive, default=100)
    bench_parser.set_defaults(run=bench_command)

    tune_parser = commands.add_parser("tune", help="tune a layer configuration's input projections "
                                      "(meta_schedule) into schedules/<hardware-key>/")
    tune_parser.add_argument("mode", choices=MODES)
    tune_parser.add_argument("--input-size", type=int, required=True)
    tune_parser.add_argument("--hidden-size", type=int, required=True)
    tune_parser.add_argument("--batch", type=int, required=True)
    tune_parser.add_argument("--seq-len", type=int, required=True)
    tune_parser.add_argument("--num-layers", type=int, default=1)
    tune_parser.add_argument("--bidirectional", action="store_true")
    tune_parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    tune_parser.add_argument("--target", default="llvm", help='"llvm" (this CPU) or e.g. "llvm -mcpu=znver3 -num-cores=8"')
    tune_parser.add_argument("--trials", type=int, default=32, help="meta_schedule trials per workload")
    tune_parser.add_argument("--rpc-tracker", help="HOST:PORT of a TVM RPC tracker: measure on a remote device")
    tune_parser.add_argument("--rpc-key", help="the remote device's key at the tracker")
    tune_parser.add_argument("--retune", action="store_true", help="tune workloads already in the database again")
    tune_parser.set_defaults(run=tune_command)

    args = parser.parse_args(argv)
    try:
        args.run(args)
    except BrokenPipeError:  # `lucid-tvm info X | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's advice: no error at exit
        return 0
    except (ValueError, TypeError, OSError, ImportError) as err:  # OSError: a path missing, unwritable, not a
        # directory; ImportError: a package an option needs, or the compiler a runtime-only install lacks
        print(f"lucid-tvm {args.command}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
