"""Floor 3: a kernel spec becomes a compiled module, cached in memory and on disk.

The disk cache is content-addressed: the key hashes everything that decides the machine code
(the kernel sources, the spec, the schedule, the target and the TVM version), so a change to any
of them compiles anew and a second process with the same inputs loads the shared library
without compiling. Files are written to a temporary name and renamed, so readers never see a
half-written module.
"""

import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

import tvm
from tvm.target import codegen

from . import barrier
from .files import file_lock, sha256, write_atomic
from .kernels import cuda, recurrent
from .kernels.spec import LayerSpec
from .schedule import compile_module, default_cuda_schedule, default_schedule, pass_config

_KERNELS = Path(__file__).parent / "kernels"
# The kernels' Python, and the barrier linked into every library with the flags of ``barrier.py``.
_KERNEL_SOURCES = sorted([*_KERNELS.glob("*.py"), *_KERNELS.glob("*.cc"), Path(barrier.__file__)])


@functools.cache  # asked for each kernel made: the features take LLVM a while to list
def host_target():
    """The CPU this process runs on, with its own -mcpu and core count, less the instruction sets
    that CPU model has and this one lacks (``-mattr=-avx512f,...``).

    A hypervisor may hide some of a CPU's features: a Zen 4 VM without AVX-512 still names its
    CPU ``znver4``, whose code would then die of an illegal instruction at the first AVX-512 one.
    So the target names the CPU, and LLVM's own reading of this CPU's features (as clang's
    ``-march=native`` takes it) turns off what the name implies and is not there. A CPU that has
    all its model's features gets the plain ``-mcpu`` target."""
    config = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": os.cpu_count() or 1}
    missing = features_missing(tvm.target.Target(config), host_cpu_features())
    if missing:
        config["mattr"] = [f"-{feature}" for feature in missing]
    return tvm.target.Target(config)


@functools.cache
def host_cpu_features():
    """{feature: whether this CPU has it}, as LLVM reads it (cpuid and the OS's saved state)."""
    return {str(name): bool(has) for name, has in tvm.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures")().items()}


def features_missing(target, features):
    """The features LLVM enables for the CPU ``target`` that ``features`` (:func:`host_cpu_features`'
    form) says are absent."""
    return sorted(str(name) for name in codegen.llvm_get_cpu_features(target) if features.get(str(name), True) is False)


def cache_dir():
    """``$LUCID_TVM_CACHE_DIR``, else ``$XDG_CACHE_HOME/lucid_tvm``, else ``~/.cache/lucid_tvm``."""
    if os.environ.get("LUCID_TVM_CACHE_DIR"):
        return Path(os.environ["LUCID_TVM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lucid_tvm"


def _sources_digest():
    h = hashlib.sha256()
    for path in _KERNEL_SOURCES:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


_SOURCES_DIGEST = _sources_digest()


def cache_key(description, target):
    """Hash of everything that decides a module's machine code."""
    text = json.dumps(
        {"module": description, "target": str(target), "tvm": tvm.__version__, "kernels": _SOURCES_DIGEST,
         "passes": pass_config(target)},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def lower_layer(spec, schedule):
    """The IRModule of one layer-direction: ``project`` and ``recur``, each on one thread and on
    all (``*_parallel``, the recurrence split by hidden blocks); ``project_first``, the parallel
    projection that also computes the first step's ``h @ W_hh^T`` for ``recur_parallel``; with several cores
    ``recur_batch_parallel`` (the recurrence split by batch rows) and ``recur_projecting`` (the
    recurrence on one thread while another projects the chunk's next steps); ``gather``, a chunk
    of a batch-first input in time-major rows."""
    s, knobs = spec, (schedule.lanes, schedule.rows)

    def recurrence(split):
        return recurrent.recurrence(s.mode, s.hidden_size, s.dtype, *knobs, split, schedule.cores,
                                    schedule.tiles_first, schedule.pieces, schedule.wide)

    functions = {"gather": recurrent.gather_steps(s.input_size, s.dtype)}
    for parallel, suffix in ((False, ""), (True, "_parallel")):
        functions["project" + suffix] = recurrent.projection(s.num_gates, s.hidden_size, s.dtype, *knobs, parallel,
                                                             cores=schedule.cores, wide=schedule.wide)
        functions["recur" + suffix] = recurrence("hidden" if parallel else None)
    functions["project_first"] = recurrent.projection(s.num_gates, s.hidden_size, s.dtype, *knobs, True,
                                                      first_step=True, cores=schedule.cores, wide=schedule.wide)
    if schedule.cores > 1:
        functions["recur_batch_parallel"] = recurrence("batch")
        functions["recur_projecting"] = recurrence("projection")
    return tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in functions.items()})


def lower_cuda_layer(spec, schedule):
    """The IRModule of one layer-direction for an NVIDIA GPU: ``project`` and ``recur``."""
    return tvm.IRModule(
        {
            "project": cuda.projection(spec.num_gates, spec.hidden_size, spec.dtype,
                                       schedule.lanes, schedule.threads, schedule.rows),
            "recur": cuda.recurrence(spec.mode, spec.hidden_size, spec.dtype,
                                     schedule.lanes, schedule.threads),
        }
    )


def _lower_cuda(identity, target):
    if identity[0] != "layer":
        raise ValueError(f"CUDA kernels exist for lucid_tvm.nn layers only, not for {identity[0]!r} "
                         "modules (the tracetorch face); export those for an llvm target")
    _check_nvcc(target)
    _use_nvcc()
    spec = LayerSpec(*identity[1:])
    schedule = default_cuda_schedule(target, spec.num_gates, spec.hidden_size)
    return ({"layer": asdict(spec), "cuda_schedule": asdict(schedule)},
            lambda: lower_cuda_layer(spec, schedule), asdict(schedule))


def lower_projection(identity, target):
    """(description, lower, schedule) of the tuned input projection of one chunk,
    ``("projection", mode, input_size, hidden_size, rows, dtype)``, or None when the target's
    tuning database has no usable record for it (the layer's default ``project`` runs then)."""
    import tvm_ffi

    from . import tuning

    mode, input_size, hidden_size, rows, dtype = identity[1:]
    workload = tuning.projection_workload(LayerSpec(mode, input_size, hidden_size, dtype), rows, target)
    found = tuning.tuned_projection(workload, target)
    if found is None:
        return None
    func, record = found
    schedule = {"lanes": workload.lanes, "rows": rows, "source": "tuned", "record": record}
    # The scheduled function's hash: a new record for the same workload compiles anew.
    description = {"projection": asdict(workload), "scheduled": str(tvm_ffi.structural_hash(func))}
    return (description, lambda: tvm.IRModule({"project": func.with_attr("global_symbol", "project")}),
            schedule)


def lower_identity(identity, target):
    """(description, lower, schedule) of a module from the runtime's registry (see
    ``runtime.compiled``) on ``target``: the cache description, a function returning its IRModule,
    and the schedule knobs as a dict. CUDA targets get the GPU kernels of ``kernels/cuda.py``.
    None for a projection without a tuned record."""
    if target.kind.name == "cuda":
        return _lower_cuda(identity, target)
    kind = identity[0]
    if kind == "projection":
        return lower_projection(identity, target)
    if kind == "layer":
        spec = LayerSpec(*identity[1:])
        schedule = default_schedule(target, spec.num_gates, spec.hidden_size, spec.dtype)
        return ({"layer": asdict(spec), "schedule": asdict(schedule)},
                lambda: lower_layer(spec, schedule), asdict(schedule))
    if kind == "gemm":
        output_size, dtype = identity[1:]
        schedule = default_schedule(target, 1, output_size, dtype)

        variants = {"project": False, "project_parallel": True}  # name: parallel

        def lower_gemm():
            return tvm.IRModule({name: recurrent.projection(1, output_size, dtype, schedule.lanes, schedule.rows,
                                                            parallel, cores=schedule.cores, wide=schedule.wide)
                                  .with_attr("global_symbol", name)
                                 for name, parallel in variants.items()})

        return ({"gemm": {"output_size": output_size, "dtype": dtype, "functions": list(variants)},
                 "schedule": asdict(schedule)}, lower_gemm, asdict(schedule))
    if kind == "tracetorch":
        from .kernels import tracetorch

        def lower_functions():
            functions = tracetorch.kernels(*identity[1:])
            return tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in functions.items()})

        return {"functions": list(identity)}, lower_functions, {}
    raise ValueError(f"unknown kernel identity {identity!r}")


def compile_identity(identity, target=None):
    """(module, schedule, cached file or None, its SHA-256 or None) for ``identity`` on ``target``
    (default: this CPU), loaded from the disk cache or compiled into it. None for a projection
    without a usable tuned record, or whose tuned schedule fails to compile (with a warning)."""
    target = target or host_target()
    lowered = lower_identity(identity, target)
    if lowered is None:
        return None
    description, lower, schedule = lowered
    if identity[0] != "projection":
        module, path, digest = compile_cached(description, lower, target)
        return module, schedule, path, digest
    try:
        module, path, digest = compile_cached(description, lower, target)
    except Exception as err:  # noqa: BLE001 - a tuned schedule that fails: the default runs
        warnings.warn(f"lucid_tvm: tuned projection {schedule['record']['workload']} failed to compile "
                      f"({type(err).__name__}: {str(err).strip()[:200]}); using the default schedule",
                      stacklevel=2)
        return None
    return module, schedule, path, digest


def build_for(identity, target):
    """(built module, schedule) of ``identity`` for any target, e.g. another machine's, for
    export; not cached and not loaded here. None for a projection with no tuned record there."""
    lowered = lower_identity(identity, target)
    if lowered is None:
        return None
    _, lower, schedule = lowered
    return compile_module(lower(), target), schedule


def parse_target(value):
    """A ``tvm.target.Target`` from a Target, a dict, a tag (``"nvidia/nvidia-h100"``) or the
    classic strings users know (``"llvm -mcpu=znver3"``,
    ``"llvm -mtriple=aarch64-linux-gnu -mattr=+neon"``, ``"cuda -arch=sm_90"``), which TVM 0.27 no
    longer parses itself. Plain ``"llvm"`` means this CPU, with its own -mcpu and core count;
    plain ``"cuda"`` this machine's GPU. CUDA targets get a generic x86-64 LLVM host."""
    if isinstance(value, tvm.target.Target):
        if value.kind.name == "cuda":
            return _with_host(value)
        _check_cpu_name(value)
        return value
    if isinstance(value, dict):
        return parse_target(tvm.target.Target(_cuda_arch_named(value, value)))
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"target: expected a string, dict or tvm.target.Target, got {value!r}")
    kind, *options = value.split()
    if kind == "llvm" and not options:
        return host_target()
    if "/" in kind and not options:  # a tag
        return parse_target(tvm.target.Target(kind))
    config = {"kind": kind}
    for option in options:
        if not option.startswith("-") or "=" not in option:
            raise ValueError(f"target {value!r}: expected options like -key=value, got {option!r}")
        key, item = option.lstrip("-").split("=", 1)
        if key in ("mattr", "libs", "keys"):
            config[key] = item.split(",")
        elif key in ("num-cores", "max_num_threads", "thread_warp_size", "opt-level"):
            if not item.isdigit():
                raise ValueError(f"target {value!r}: -{key} takes a whole number, got {item!r}")
            config[key] = int(item)
        else:
            config[key] = item
    config = _cuda_arch_named(config, value)
    try:
        target = tvm.target.Target(config)
    except Exception as err:  # noqa: BLE001 - TVM's own message says what is wrong
        raise ValueError(f"target {value!r} is not valid: {err}") from None
    return parse_target(target)


def _check_cpu_name(target):
    """A CPU LLVM does not know would compile, after some 200 lines of complaint from LLVM, for
    a generic one (4 lanes on x86): a typo would export slow code without a word."""
    cpu = target.attrs.get("mcpu")
    if target.kind.name == "llvm" and cpu:
        triple = str(target.attrs.get("mtriple") or codegen.llvm_get_system_triple())
        if not codegen.llvm_is_valid_cpu(str(cpu), triple):
            raise ValueError(f"target {str(target)!r}: LLVM knows no CPU {str(cpu)!r} for {triple}")


def _cuda_arch_named(config, value):
    """``config`` with an ``arch`` when it is a CUDA target: TVM would quietly pick sm_50 for a
    target without one. Taken from this machine's GPU; without a GPU it must be named."""
    if config.get("kind") != "cuda" or config.get("arch"):
        return config
    device = tvm.cuda(0)
    if not device.exist:
        raise ValueError(f"target {value!r} names no GPU architecture and this machine has no CUDA "
                         "device to take it from; name one, e.g. 'cuda -arch=sm_90'")
    return dict(config, arch="sm_" + device.compute_version.replace(".", ""))


def _with_host(target):
    if not cuda_arch(target).startswith("sm_"):
        raise ValueError(f"target {str(target)!r}: expected an arch like sm_90, got {cuda_arch(target)!r}")
    if target.host is not None:
        return target
    return tvm.target.Target(target, host=tvm.target.Target({"kind": "llvm"}))


def cuda_arch(target):
    """``"sm_90"`` for a CUDA target."""
    return str(target.attrs["arch"])


def _nvcc_fatbin(code, target):
    """TVM's ``tvm_callback_cuda_postproc`` hook: CUDA source -> fatbin for the target's arch.

    The TVM 0.27 wheel builds CUDA modules without a compiler of its own: it embeds whatever this
    hook returns (by default the CUDA source, which no driver can load) and the CUDA runtime
    hands it to ``cuModuleLoadData``. We return a fatbin with the SASS for ``sm_XX`` and the PTX
    for ``compute_XX`` (uncompressed, so the PTX stays readable), built by nvcc without fast-math
    (its approximate division and exp would miss the CPU results by far more than 1e-5).
    """
    nvcc, _ = _nvcc()
    version = cuda_arch(target)[len("sm_"):]
    with tempfile.TemporaryDirectory(prefix="lucid_tvm_nvcc") as tmp:
        source, fatbin = Path(tmp) / "kernels.cu", Path(tmp) / "kernels.fatbin"
        source.write_text(code)
        command = [nvcc, "--fatbin", "-O3", "--no-compress",
                   f"-gencode=arch=compute_{version},code=[sm_{version},compute_{version}]",
                   "-o", str(fatbin), str(source)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"nvcc failed ({' '.join(command)}):\n{done.stdout}{done.stderr}")
        return fatbin.read_bytes()


@functools.cache
def _nvcc():
    """(nvcc's path or None, the set of ``compute_XX`` it builds, or None if it does not say)."""
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc is None:
        return None, None
    listed = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=False)
    return nvcc, (frozenset(listed.stdout.split()) if listed.returncode == 0 else None)


def _check_nvcc(target):
    """Before code generation, whose hook's errors come back wrapped in TVM's traceback: nvcc is
    there and builds the target's arch (CUDA 13 dropped everything before compute_75)."""
    nvcc, builds = _nvcc()
    if nvcc is None:
        raise FileNotFoundError("building for CUDA needs nvcc (the CUDA toolkit) on PATH")
    compute = "compute_" + cuda_arch(target)[len("sm_"):].rstrip("abf")  # sm_90a: compute_90's family
    if builds is not None and compute not in builds:
        raise ValueError(f"this nvcc ({nvcc}) cannot build {cuda_arch(target)}: it builds "
                         f"{', '.join(sorted(builds, key=lambda name: int(name[len('compute_'):])))}")


@functools.cache
def _use_nvcc():
    """Route TVM's CUDA code generation through :func:`_nvcc_fatbin` (once, process-wide)."""
    import tvm_ffi

    tvm_ffi.register_global_func("tvm_callback_cuda_postproc", _nvcc_fatbin, override=True)


def compile_cached(description, lower, target):
    """(module, file or None, the file's SHA-256 or None) for ``description``: from the disk
    cache, or built by ``lower()``."""
    return _load_or_build(cache_key(description, target), lower, target)


def _load_or_build(key, lower, target):
    directory = cache_dir()
    path, digest_path = directory / f"{key}.so", directory / f"{key}.sha256"
    # A second process asking for the same kernel waits here, then loads the first one's file.
    with file_lock(directory / f"{key}.lock"):
        cached = _load_verified(path, digest_path)
        if cached is not None:
            return cached
        module = compile_module(lower(), target)
        try:
            write_atomic(path, lambda tmp: barrier.export_library(module, tmp))
            digest = sha256(path)
            write_atomic(digest_path, lambda tmp: Path(tmp).write_text(digest))
            # Run from the shared library, as a later process would.
            return barrier.load_module(path), path, digest
        except OSError as err:
            warnings.warn(f"lucid_tvm: cannot write the kernel cache at {directory} ({err}); "
                          "kernels will be compiled in every process", stacklevel=4)
            return module, None, None


def _load_verified(path, digest_path):
    """(module, path, checksum) of the cached file if it matches the checksum written with it,
    else None (with a warning when a file was there): a damaged shared library must never be
    loaded and run."""
    if not path.exists():
        return None
    try:
        digest = digest_path.read_text().strip()
        if digest != sha256(path):
            raise ValueError("checksum mismatch (truncated or modified file)")
        return barrier.load_module(path), path, digest
    except Exception as err:  # noqa: BLE001 - any failure means: rebuild
        warnings.warn(f"lucid_tvm: discarding cached module {path}: {err}; rebuilding it", stacklevel=5)
        return None
