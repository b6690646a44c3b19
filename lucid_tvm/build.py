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
from .kernels.spec import LayerSpec
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
    and the schedule knobs as a dict. None for a projection without a tuned record."""
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

        def lower_gemm():
            return tvm.IRModule({"project": recurrent.projection(
                1, output_size, dtype, schedule.lanes, schedule.rows, schedule.project_parallel)})

        return ({"gemm": {"output_size": output_size, "dtype": dtype}, "schedule": asdict(schedule)},
                lower_gemm, asdict(schedule))
    if kind == "tracetorch":
        from .kernels import tracetorch

        def lower_functions():
            functions = tracetorch.kernels(*identity[1:])
            return tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in functions.items()})

        return {"functions": list(identity)}, lower_functions, {}
    raise ValueError(f"unknown kernel identity {identity!r}")


def compile_identity(identity, target=None):
    """(module, schedule, cached file or None) for ``identity`` on ``target`` (default: this CPU),
    loaded from the disk cache or compiled into it. None for a projection without a usable tuned
    record, or whose tuned schedule fails to compile (with a warning)."""
    target = target or host_target()
    lowered = lower_identity(identity, target)
    if lowered is None:
        return None
    description, lower, schedule = lowered
    if identity[0] != "projection":
        module, path = compile_cached(description, lower, target)
        return module, schedule, path
    try:
        module, path = compile_cached(description, lower, target)
    except Exception as err:  # noqa: BLE001 - a tuned schedule that fails: the default runs
        warnings.warn(f"lucid_tvm: tuned projection {schedule['record']['workload']} failed to compile "
                      f"({type(err).__name__}: {str(err).strip()[:200]}); using the default schedule",
                      stacklevel=2)
        return None
    return module, schedule, path


def build_for(identity, target):
    """(built module, schedule) of ``identity`` for any target, e.g. another machine's, for
    export; not cached and not loaded here. None for a projection with no tuned record there."""
    lowered = lower_identity(identity, target)
    if lowered is None:
        return None
    _, lower, schedule = lowered
    return tvm.tirx.build(lower(), target=target), schedule


def parse_target(value):
    """A ``tvm.target.Target`` from a Target, a dict, a tag (``"nvidia/nvidia-h100"``) or the
    classic strings users know (``"llvm -mcpu=znver3"``,
    ``"llvm -mtriple=aarch64-linux-gnu -mattr=+neon"``, ``"cuda -arch=sm_90"``), which TVM 0.27 no
    longer parses itself. Plain ``"llvm"`` means this CPU, with its own -mcpu and core count."""
    if isinstance(value, tvm.target.Target):
        return value
    if isinstance(value, dict):
        return tvm.target.Target(value)
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"target: expected a string, dict or tvm.target.Target, got {value!r}")
    kind, *options = value.split()
    if kind == "llvm" and not options:
        return host_target()
    if "/" in kind and not options:  # a tag
        return tvm.target.Target(kind)
    config = {"kind": kind}
    for option in options:
        if not option.startswith("-") or "=" not in option:
            raise ValueError(f"target {value!r}: expected options like -key=value, got {option!r}")
        key, item = option.lstrip("-").split("=", 1)
        if key in ("mattr", "libs", "keys"):
            config[key] = item.split(",")
        elif key in ("num-cores", "max_num_threads", "thread_warp_size", "opt-level"):
            config[key] = int(item)
        else:
            config[key] = item
    try:
        return tvm.target.Target(config)
    except Exception as err:  # noqa: BLE001 - TVM's own message says what is wrong
        raise ValueError(f"target {value!r} is not valid: {err}") from None


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
