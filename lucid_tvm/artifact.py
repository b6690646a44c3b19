"""Ahead-of-time artifacts: a layer's compiled kernels, weights and a manifest, in one directory.

``export`` writes what a layer needs to run, for this CPU, another CPU or an NVIDIA GPU
(``target="cuda -arch=sm_90"``: the kernels hold a fatbin with the GPU code); ``load`` rebuilds the
layer from it with TVM's runtime alone (``TVM_USE_RUNTIME_LIB=1`` works: nothing here imports the compiler). The manifest
says what is inside and holds a SHA-256 of every file, so a changed, truncated or missing file is
refused with an ``ArtifactError`` instead of being loaded and run.

Layout::

    manifest.json        format, versions, target and CPU, layer class and configuration, shapes,
                         kernels (with their schedules), checksums
    weights.npz          the state dict
    kernels/<n>.so       one shared library per compiled module
"""

import json
import platform
import shutil
import warnings
from pathlib import Path

import numpy as np
import tvm

from . import __version__, barrier, runtime
from .files import sha256, write_atomic
from .kernels.spec import LayerSpec
from .tensor import numpy_dtype

# 2: the kernels read the layer's input and write its output in place at any element alignment
# (format 1 kernels assume 64-byte aligned ones, which the runtime no longer makes: refused).
# 3: layer modules hold ``gather``, which copies a batch-first input into time-major rows a
# chunk at a time (format 2 ones lack it).
# 4: ``recur`` takes ``hp_ready``, and layer modules hold ``project_first``, which computes the
# first step's ``h @ W_hh^T`` beside the projection (format 3 ones lack both).
# 5: the tracetorch LSTM's kernels take ``acts`` (forward) and ``dpre`` (backward) as (B, 4, H),
# the GRU's ``backward_gates`` its ``dpre1`` as (B, 2, H) (format 4 ones take them 2-D). Format 4
# artifacts of other layers hold the kernels of format 5: they load.
FORMAT = 5
_CHANGED_IN_5 = {("tracetorch", "LSTM"), ("tracetorch", "GRU")}


class ArtifactError(ValueError):
    """An artifact that cannot be loaded here: damaged, newer, or built for another machine."""


def _cpu_flags():
    """The CPU feature flags of this machine (x86 ``flags`` or Arm ``Features``), if readable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return sorted(value.split())
    return None


# x86 instruction sets LLVM may use for a named CPU, by LLVM's names; /proc/cpuinfo's are the same
# with "_" for ".".
_X86_FEATURES = ("ssse3", "sse4.1", "sse4.2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw",
                 "avx512cd", "avx512dq", "avx512vl")


def _required_flags(target, on_host, machine):
    """The CPU feature flags a machine needs to run the kernels: all of this one's for the host
    target, those LLVM enables for a named x86 CPU (``-mcpu=skylake-avx512``) otherwise; None
    where neither is known (Arm, CUDA)."""
    if on_host:
        return _cpu_flags()
    if target.kind.name != "llvm" or machine != "x86_64":
        return None
    from tvm.target import codegen

    enabled = codegen.llvm_get_cpu_features(target)
    return sorted(name.replace(".", "_") for name in _X86_FEATURES if name in enabled)


def _describe(module):
    """(face, class name, constructor arguments, dtype name) of a supported layer."""
    from . import nn

    name = type(module).__name__
    if isinstance(module, nn.RNNBase):
        config = {key: getattr(module, key) for key in
                  ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")}
        if name == "RNNBase":
            config["mode"] = module.mode
        elif name == "RNN":
            config["nonlinearity"] = module.nonlinearity
        return "lucid.nn", name, config, module.dtype.name
    if isinstance(module, (nn.RNNCell, nn.LSTMCell, nn.GRUCell)):
        config = {"input_size": module.input_size, "hidden_size": module.hidden_size, "bias": module.bias}
        if name == "RNNCell":
            config["nonlinearity"] = "relu" if module.mode == "RNN_RELU" else "tanh"
        return "lucid.nn", name, config, module.dtype.name
    from . import tracetorch as tt

    if isinstance(module, tt.rnn.Layer):
        config = {"in_features": module.in_features, "out_features": module.out_features, "dim": module.dim}
        dtype = next(module.parameters()).dtype
        return "tracetorch", name, config, numpy_dtype(dtype).name
    raise TypeError(f"export: expected a lucid_tvm.nn or lucid_tvm.tracetorch recurrent layer, got {name}")


def _run_once(module, face, example_input):
    """Run the layer on the example without changing it: a tracetorch layer from empty states
    (those it holds may be of another batch), which are then put back."""
    if face == "tracetorch":
        import torch

        saved = {name: getattr(module, name) for name in module._state_names}
        try:
            for name in saved:
                setattr(module, name, None)
            with torch.no_grad():
                module(example_input)
        finally:
            for name, value in saved.items():
                setattr(module, name, value)
    else:
        module(example_input)


def _machine(target):
    """The machine a CPU target's code runs on: from -mtriple, else this one."""
    triple = target.attrs.get("mtriple") if hasattr(target, "attrs") else None
    return str(triple).split("-")[0] if triple else platform.machine()


def _write_kernel(built, path, file, machine):
    """Write a module built for another target: a shared library when it can be linked here
    (same machine, or a ``<triple>-g++`` cross compiler on PATH), else an archive of objects."""
    from tvm.support import cc

    if machine == platform.machine():
        write_atomic(path / file, lambda tmp: barrier.export_library(built, tmp))
        return file, None
    cross = shutil.which(f"{machine}-linux-gnu-g++")
    if cross:
        write_atomic(path / file, lambda tmp: barrier.export_library(built, tmp, fcompile=cc.cross_compiler(cross)))
        return file, None
    archive = file.replace(".so", ".tar")
    write_atomic(path / archive, lambda tmp: barrier.export_library(built, tmp))
    return archive, (f"no {machine}-linux-gnu-g++ here: this archive holds the object files and "
                     f"{barrier.SOURCE.name}; on a {machine} machine link them with "
                     f"`g++ -O2 -shared -fPIC -o {Path(file).name} *.o {barrier.SOURCE.name}` "
                     f"(or install g++-{machine}-linux-gnu and export again)")


def export(module, path, target="llvm", example_input=None):
    """Write ``module`` (a lucid_tvm.nn or lucid_tvm.tracetorch layer) as an artifact directory.

    ``target``: ``"llvm"`` (this CPU), a classic string such as
    ``"llvm -mtriple=aarch64-linux-gnu -mattr=+neon"`` or ``"cuda -arch=sm_90"`` (lucid_tvm.nn
    layers; plain ``"cuda"`` means this machine's GPU), a dict or a ``tvm.target.Target``.
    ``example_input`` is run once (here, on this CPU) to find the kernels the layer uses; its
    feature size is fixed in the artifact, while sequence length and batch (every other axis for
    tracetorch) may vary.
    """
    try:
        from . import build
    except ImportError as err:  # TVM_USE_RUNTIME_LIB=1: TVM's runtime only, which loads but cannot compile
        raise ImportError(f"export compiles kernels and needs TVM's compiler, which this process did not "
                          f"import ({err}); run it without TVM_USE_RUNTIME_LIB=1") from err

    named, target = target, build.parse_target(target)
    if target.kind.name not in ("llvm", "cuda"):
        raise ValueError(f"export: expected an llvm (CPU) or cuda target, got {target.kind.name}")
    if target.kind.name == "llvm" and not target.attrs.get("num-cores"):
        # The schedules then run each parallel variant as one task and leave out the others.
        warnings.warn(f"export: the target {named if isinstance(named, str) else str(target)!r} names no core "
                      "count, so its kernels run on one thread; add -num-cores=N (the device's cores) to use "
                      "them all", stacklevel=2)
    if example_input is None:
        raise ValueError("export: example_input is required (it decides which kernels are compiled)")
    face, name, config, dtype = _describe(module)
    is_cuda = target.kind.name == "cuda"
    if is_cuda and face != "lucid.nn":
        raise ValueError(f"export: CUDA artifacts hold lucid_tvm.nn layers; {name} (tracetorch) "
                         "exports for llvm targets only")
    with runtime.recording() as used:
        _run_once(module, face, example_input)
    if not used:  # an empty batch: the artifact would hold no kernel to run a real one
        raise ValueError(f"export: the example input of shape {tuple(np.shape(example_input))} ran no "
                         "kernel; give one with at least one batch entry")
    path = Path(path)
    (path / "kernels").mkdir(parents=True, exist_ok=True)
    on_host = str(target) == str(build.host_target())
    machine = _machine(target.host if is_cuda else target)
    kernels = []
    shipped = used if is_cuda else used | _tuned_projections(used, target)
    for index, identity in enumerate(sorted(shipped, key=repr)):
        file, note = f"kernels/{index}.so", None
        if on_host and identity in used:  # the modules this process runs, from the kernel cache
            entry = runtime.registered(identity)
            schedule = entry.schedule
            # Each file is written aside and renamed into place: a process that has loaded the
            # artifact keeps its mapped kernels, and one exporting a loaded artifact again into
            # its own directory copies each file onto itself.
            if entry.path is None:  # built in this process (the kernel cache was not writable)
                write_atomic(path / file, lambda tmp: barrier.export_library(entry.module, tmp))
            elif not _copied_intact(entry, path / file):  # its file deleted or changed since it was loaded
                built, schedule = _built_again(identity, target, entry.schedule)
                write_atomic(path / file, lambda tmp: barrier.export_library(built, tmp))
        else:
            found = _build_for(identity, target)
            if found is None:  # a tuned projection with no record for that target: the default runs
                continue
            built, schedule = found
            file, note = _write_kernel(built, path, file, machine)
        kernel = {"identity": list(identity), "file": file, "schedule": schedule,
                  "schedule_source": schedule.get("source", "default")}
        if "record" in schedule:
            kernel["record"] = schedule["record"]
        if note:
            kernel["note"] = note
        kernels.append(kernel)
    weights = {key: np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
               for key, value in module.state_dict().items()}
    write_atomic(path / "weights.npz", lambda tmp: np.savez(tmp, **weights))
    files = ["weights.npz"] + [k["file"] for k in kernels]
    manifest = {
        "format": FORMAT,
        "lucid_tvm": __version__,
        "tvm": tvm.__version__,
        "target": {"string": str(target), "kind": target.kind.name, "machine": machine,
                   "cpu_flags": _required_flags(target, on_host, machine),
                   **({"arch": build.cuda_arch(target)} if is_cuda else {})},
        "layer": {"face": face, "class": name, "config": config, "training": bool(module.training)},
        "dtype": dtype,
        "shapes": {
            "example_input": list(np.shape(example_input)),
            "fixed": {"features": int(np.shape(example_input)[_feature_axis(face, module)])},
            "varying": ["every axis but the features"] if face == "tracetorch" else ["sequence length", "batch"],
        },
        "kernels": kernels,
        "files": {file: sha256(path / file) for file in files},
    }
    write_atomic(path / "manifest.json", lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2)))
    return path


def _tuned_projections(used, target):
    """The input projections of every layer kind in ``used`` that ``target``'s tuning database
    has a record in use for: the artifact's sequence lengths and batches, and so its chunks' row
    counts, may differ from the example's."""
    from . import tuning

    layers = [LayerSpec(*identity[1:]) for identity in used if identity[0] == "layer"]
    return {("projection", s.mode, s.input_size, s.hidden_size, rows, s.dtype)
            for s in layers for rows in tuning.tuned_rows(s, target)}


def _feature_axis(face, module):
    return module.dim if face == "tracetorch" else -1


# The layers an artifact holds, by face (the manifest's ``layer.face`` and ``layer.class``).
LAYER_CLASSES = {"lucid.nn": ("RNN", "LSTM", "GRU", "RNNBase", "RNNCell", "LSTMCell", "GRUCell"),
                 "tracetorch": ("SimpleRNN", "LSTM", "GRU")}


def _check_structure(path, manifest):
    """The manifest's parts of the types :func:`load` reads, a layer it can make, and every file it
    loads among those it checksums. Users edit it (``docs/deployment.md``, linking on the device),
    and a kernel left out of ``files`` would be loaded unchecked (a truncated one crashed the
    process)."""
    def refuse(what):
        raise ArtifactError(f"{path}/manifest.json: {what}; export the layer again")

    files, layer, kernels = manifest["files"], manifest["layer"], manifest["kernels"]
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        refuse("'files' is not a map of file names to checksums")
    target = manifest["target"]
    if not (isinstance(target, dict) and isinstance(target.get("string"), str)
            and isinstance(target.get("machine"), str)) or not isinstance(manifest["dtype"], str):
        refuse("'target' is not an object with its string and machine, or 'dtype' not a name")
    shapes = manifest["shapes"]
    if not (isinstance(shapes, dict) and isinstance(shapes.get("example_input"), list)
            and isinstance(shapes.get("fixed"), dict) and isinstance(shapes.get("varying"), list)):
        refuse("'shapes' lacks the example input's shape, or what is fixed and what varies")
    if not (isinstance(layer, dict) and layer.get("class") in LAYER_CLASSES.get(layer.get("face"), ())
            and isinstance(layer.get("config"), dict) and isinstance(layer.get("training"), bool)):
        refuse(f"'layer' is not one of {LAYER_CLASSES} with its config and training mode")
    if not isinstance(kernels, list) or not all(
            isinstance(k, dict) and isinstance(k.get("file"), str) and isinstance(k.get("identity"), list)
            and isinstance(k.get("schedule"), dict) for k in kernels):
        refuse("'kernels' is not a list of kernels, each with its file, identity and schedule")
    if not all(isinstance(k["schedule"].get("lanes"), int) for k in kernels if k["identity"][:1] in (["layer"], ["gemm"])):
        refuse("a layer or GEMM kernel's schedule lacks its lanes, the vector width its weights are packed for")
    unlisted = [file for file in ["weights.npz"] + [k["file"] for k in kernels] if file not in files]
    if unlisted:
        refuse(f"{', '.join(unlisted)} not among its checksummed 'files'")


def read_manifest(path):
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path} is not a lucid_tvm artifact: manifest.json is missing") from None
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{path}/manifest.json cannot be read: {err}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("format"), int):
        raise ArtifactError(f"{path}/manifest.json has no format number; not a lucid_tvm artifact")
    if manifest["format"] > FORMAT:
        raise ArtifactError(f"{path} has manifest format {manifest['format']}, newer than this "
                            f"lucid_tvm {__version__} reads (up to {FORMAT}); upgrade lucid-tvm")
    layer = manifest.get("layer") if isinstance(manifest.get("layer"), dict) else {}
    unchanged = manifest["format"] == 4 and (layer.get("face"), layer.get("class")) not in _CHANGED_IN_5
    if manifest["format"] < FORMAT and not unchanged:
        raise ArtifactError(f"{path} has manifest format {manifest['format']}, from an older lucid_tvm "
                            f"whose kernels this one cannot call (it reads format {FORMAT}); export "
                            "the layer again")
    missing = [key for key in ("target", "layer", "dtype", "shapes", "kernels", "files") if key not in manifest]
    if missing:
        raise ArtifactError(f"{path}/manifest.json lacks {', '.join(missing)}; export the layer again")
    _check_structure(path, manifest)
    return manifest


def _check_machine(path, target):
    if target.get("machine") != platform.machine():
        raise ArtifactError(f"{path} was compiled for {target.get('machine')}, this machine is "
                            f"{platform.machine()}")
    needed, here = target.get("cpu_flags"), _cpu_flags()
    if needed and here is not None:
        missing = sorted(set(needed) - set(here))
        # Only instruction-set flags matter; virtualization and bug flags may differ between hosts.
        missing = [flag for flag in missing if flag.startswith(("avx", "sse", "ssse", "fma", "f16c", "bmi", "amx", "asimd", "sve"))]
        if missing:
            raise ArtifactError(f"{path} was compiled for a CPU with {', '.join(missing)}, "
                                "which this CPU lacks; export it again on (or for) this machine")


def _copied_intact(entry, destination):
    """Copy the file ``entry`` was loaded from to ``destination`` if it still has the checksum it
    was loaded with; False (nothing written) if it is gone or has changed since. A module loaded
    from a library cannot be exported again from memory, so the file is the only copy of it."""
    def copy_verified(tmp):
        shutil.copyfile(entry.path, tmp)
        if sha256(tmp) != entry.digest:
            raise ValueError("checksum mismatch")

    try:
        write_atomic(destination, copy_verified)
    except (OSError, ValueError):
        return False
    return True


def _build_for(identity, target):
    """``build.build_for``, one compile at a time with the runtime's (``runtime.compile_lock``)."""
    from . import build

    with runtime.compile_lock:
        return build.build_for(identity, target)


def _built_again(identity, target, schedule):
    """(module, schedule) of ``identity`` compiled again, for a kernel whose file went away: the
    same schedule the running one has, or an ArtifactError (a loaded artifact's kernel, say,
    whose schedule came from another machine's tuning)."""
    found = _build_for(identity, target)
    if found is None or found[1] != schedule:
        raise ArtifactError(f"the kernel file of {identity} this process loaded has been deleted or changed, "
                            "and compiling it again here gives another schedule; export from a new process")
    return found


def verify_files(path, manifest):
    for file, digest in manifest["files"].items():
        full = path / file
        if not full.is_file():
            raise ArtifactError(f"{path}: {file} is missing" + (" (a directory is there)" if full.is_dir() else ""))
        if sha256(full) != digest:
            raise ArtifactError(f"{path}: {file} was changed after export (checksum mismatch)")


def _check_gpu(path, target):
    """A CUDA artifact needs a CUDA device whose compute capability runs its arch's code."""
    arch = target.get("arch", "")
    if not runtime.cuda_device_present():
        raise ArtifactError(f"{path} was compiled for CUDA ({arch}); this machine has no CUDA device "
                            "that TVM's runtime can use. Load it on a machine with an NVIDIA GPU "
                            "and driver, or export the layer again for an llvm target")
    here = tvm.cuda(0).compute_version  # e.g. "9.0"
    have = tuple(int(v) for v in here.split("."))
    digits = arch[len("sm_"):].rstrip("a")
    need = (int(digits[:-1]), int(digits[-1]))
    if have < need:
        raise ArtifactError(f"{path} was compiled for {arch}; this GPU has compute capability "
                            f"{here}, too old to run it. Export again with target 'cuda' on this machine")
    if arch.endswith("a") and have != need:  # sm_90a: that architecture's own features, no later one's
        raise ArtifactError(f"{path} was compiled for {arch}, whose code runs on compute capability "
                            f"{need[0]}.{need[1]} only; this GPU has {here}. Export again with target "
                            f"'cuda -arch=sm_{digits}' (which later GPUs run) or 'cuda' on this machine")


def load(path):
    """The layer exported at ``path``, running its own compiled kernels (no compiler needed).
    The layer of a CUDA artifact runs on torch CUDA tensors (in and out, zero-copy)."""
    path = Path(path)
    manifest = read_manifest(path)
    _check_machine(path, manifest["target"])
    is_cuda = manifest["target"].get("kind") == "cuda"
    if is_cuda:
        _check_gpu(path, manifest["target"])
    verify_files(path, manifest)
    for kernel in manifest["kernels"]:
        if not kernel["file"].endswith(".so"):
            raise ArtifactError(f"{path}: {kernel['file']} is not linked: {kernel.get('note', '')}")
        module = barrier.load_module(path / kernel["file"])
        identity = tuple(kernel["identity"])
        runtime.register((runtime.CUDA, identity) if is_cuda else identity,
                         runtime.Compiled(module, kernel["schedule"], path / kernel["file"],
                                          manifest["files"][kernel["file"]]))
    layer, weights = manifest["layer"], dict(np.load(path / "weights.npz"))
    try:
        if layer["face"] == "tracetorch":
            import torch

            from . import tracetorch as tt

            module = getattr(tt.rnn, layer["class"])(**layer["config"]).to(getattr(torch, manifest["dtype"]))
            module.load_state_dict({key: torch.from_numpy(value) for key, value in weights.items()})
        else:
            from . import nn

            module = getattr(nn, layer["class"])(**layer["config"]).to(manifest["dtype"])
            module.load_state_dict(weights)
    except (TypeError, ValueError, AttributeError, RuntimeError) as err:  # RuntimeError: torch's load_state_dict
        raise ArtifactError(f"{path}: its manifest's layer {layer['class']}({layer['config']}) cannot be made "
                            f"with its weights: {err}") from None
    return module.train(layer["training"])
