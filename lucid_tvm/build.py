"""Floor 3: a kernel spec becomes a compiled module, cached in memory and on disk.

The disk cache is content-addressed: the key hashes everything that decides the machine code
(the kernel sources, the spec, the schedule, the target and the TVM version), so a change to any
of them compiles anew and a second process with the same inputs loads the shared library
without compiling. Files are written to a temporary name and renamed, so readers never see a
half-written module.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import tvm
from tvm.target import codegen

from .files import sha256, write_atomic
from .kernels import recurrent
from .schedule import default_schedule

_KERNEL_SOURCES = sorted((Path(__file__).parent / "kernels").glob("*.py"))


def host_target():
    """The CPU this process runs on, with its own -mcpu and core count."""
    return tvm.target.Target(
        {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": os.cpu_count() or 1}
    )


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
        {"module": description, "target": str(target), "tvm": tvm.__version__, "kernels": _SOURCES_DIGEST},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def lower_layer(spec, schedule):
    """The IRModule of one layer-direction: ``project`` and ``recur``."""
    return tvm.IRModule(
        {
            "project": recurrent.projection(
                spec.num_gates, spec.hidden_size, spec.dtype,
                schedule.lanes, schedule.rows, schedule.project_parallel,
            ),
            "recur": recurrent.recurrence(
                spec.mode, spec.hidden_size, spec.dtype,
                schedule.lanes, schedule.rows, schedule.recur_parallel,
            ),
        }
    )


def compile_layer(spec, target=None):
    """(module, schedule as a dict, cached file or None) of one lucid layer-direction on ``target``
    (default: this CPU)."""
    target = target or host_target()
    schedule = default_schedule(target, spec.num_gates, spec.hidden_size, spec.dtype)
    description = {"layer": asdict(spec), "schedule": asdict(schedule)}
    module, path = compile_cached(description, lambda: lower_layer(spec, schedule), target)
    return module, asdict(schedule), path


def compile_gemm(output_size, dtype, target=None):
    """(module with ``project``, schedule, file) for ``x @ W^T`` with W of ``output_size`` rows."""
    target = target or host_target()
    schedule = default_schedule(target, 1, output_size, dtype)
    description = {"gemm": {"output_size": output_size, "dtype": dtype}, "schedule": asdict(schedule)}

    def lower():
        return tvm.IRModule({"project": recurrent.projection(
            1, output_size, dtype, schedule.lanes, schedule.rows, schedule.project_parallel)})

    module, path = compile_cached(description, lower, target)
    return module, asdict(schedule), path


def compile_functions(description, functions, target=None):
    """(module, {}, file) of named PrimFuncs (e.g. from ``kernels.tracetorch``) with their default loops."""
    target = target or host_target()

    def lower():
        return tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in functions().items()})

    module, path = compile_cached(description, lower, target)
    return module, {}, path


def compile_cached(description, lower, target):
    """(module, file or None) for ``description``: from the disk cache, or built by ``lower()``."""
    return _load_or_build(cache_key(description, target), lower, target)


def _load_or_build(key, lower, target):
    directory = cache_dir()
    path, digest_path = directory / f"{key}.so", directory / f"{key}.sha256"
    # A second process asking for the same kernel waits here, then loads the first one's file.
    with _file_lock(directory / f"{key}.lock"):
        cached = _load_verified(path, digest_path)
        if cached is not None:
            return cached, path
        module = tvm.tirx.build(lower(), target=target)
        try:
            write_atomic(path, module.export_library)
            write_atomic(digest_path, lambda tmp: Path(tmp).write_text(sha256(path)))
            # Run from the shared library, as a later process would.
            return tvm.runtime.load_module(str(path)), path
        except OSError as err:
            warnings.warn(f"lucid_tvm: cannot write the kernel cache at {directory} ({err}); "
                          "kernels will be compiled in every process", stacklevel=4)
            return module, None


def _load_verified(path, digest_path):
    """The cached module if its file matches the checksum written with it, else None (with a
    warning when a file was there): a damaged shared library must never be loaded and run."""
    if not path.exists():
        return None
    try:
        if digest_path.read_text().strip() != sha256(path):
            raise ValueError("checksum mismatch (truncated or modified file)")
        return tvm.runtime.load_module(str(path))
    except Exception as err:  # noqa: BLE001 - any failure means: rebuild
        warnings.warn(f"lucid_tvm: discarding cached module {path}: {err}; rebuilding it", stacklevel=5)
        return None


@contextlib.contextmanager
def _file_lock(path):
    """An exclusive lock across processes; none when the cache directory cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
