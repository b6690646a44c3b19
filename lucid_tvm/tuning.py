"""Floor 2: tuned schedules of the input projection, per hardware, with meta_schedule.

What is tuned: the input projection GEMM of one chunk of a layer's sequence
(:func:`.kernels.projection_te.projection_te`, all sizes static). The recurrent step keeps its
hand schedule. Tuning measures every candidate on the target (here, or on a remote board
through TVM's RPC tracker), then times the best one against the default hand-written kernel
(:func:`.kernels.recurrent.projection`) on the same device. Both times are kept.

A database lives in ``schedules/<hardware key>/`` (or ``$LUCID_TVM_SCHEDULES_DIR/<key>/``)::

    database_workload.json        meta_schedule's JSON database: the tuned workloads ...
    database_tuning_record.json   ... and the best schedule (a trace) of each
    measurements.json             per workload: tuned and default time, trials, and whether the
                                  tuned schedule is used (only when it measured at least 10%
                                  faster, see SPEEDUP_MARGIN)

At compile time :func:`tuned_projection` looks a chunk's workload up in the database of the
target's hardware key; ``build`` compiles it as its own module, and the runtime calls it for
chunks of exactly that many rows.
"""

import contextlib
import functools
import json
import logging
import os
import re
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tvm

from .files import file_lock, write_atomic
from .kernels import recurrent
from .kernels.layout import num_blocks, packed_row_bytes
from .kernels.projection_te import projection_te
from .kernels.spec import LayerSpec
from .schedule import chunk_steps, compile_module, default_schedule

MEASUREMENTS = "measurements.json"
def _microseconds(seconds):
    """A measured time in us to 4 significant digits: a tiny projection's 0.02 us rounded to
    hundredths showed equal times where the tuned one was used for being 10% faster."""
    return float(f"{float(seconds) * 1e6:.4g}")


# A tuned schedule is used only when it measured at least this much faster than the default
# kernel: timings on a shared 2-core machine move by several percent from run to run.
SPEEDUP_MARGIN = 0.9


def schedules_dir():
    """``$LUCID_TVM_SCHEDULES_DIR``, else the ``schedules/`` directory of this repository."""
    if os.environ.get("LUCID_TVM_SCHEDULES_DIR"):
        return Path(os.environ["LUCID_TVM_SCHEDULES_DIR"])
    return Path(__file__).resolve().parent.parent / "schedules"


def hardware_key(target):
    """A directory name for the hardware a target means: kind, CPU model or GPU arch, cores.

    ``llvm-znver5-2c`` (this VM), ``llvm-cortex-a72-4c``, ``llvm-aarch64-4c`` (no -mcpu: the
    triple's architecture), ``cuda-sm_90``.
    """
    if not isinstance(target, tvm.target.Target):
        raise TypeError(f"hardware_key: expected a tvm.target.Target, got {type(target).__name__}")
    attrs, kind = target.attrs, target.kind.name
    if kind == "cuda":
        arch = attrs.get("arch")
        if not arch:
            raise ValueError(f"hardware_key: CUDA target {target} names no arch (e.g. sm_90)")
        return f"cuda-{arch}"
    if kind != "llvm":
        raise ValueError(f"hardware_key: unsupported target kind {kind!r} (expected llvm or cuda)")
    model = attrs.get("mcpu") or (str(attrs["mtriple"]).split("-")[0] if attrs.get("mtriple") else "generic")
    cores = int(attrs.get("num-cores") or os.cpu_count() or 1)
    return f"llvm-{model}-{cores}c"


@dataclass(frozen=True)
class ProjectionWorkload:
    """One chunk's projection: ``rows`` rows of ``input_size`` to ``num_gates * output_size``."""

    rows: int
    input_size: int
    output_size: int
    num_gates: int
    lanes: int
    dtype: str

    @property
    def name(self):
        return (f"rows{self.rows}-k{self.input_size}-n{self.output_size}-g{self.num_gates}"
                f"-l{self.lanes}-{self.dtype}")

    def prim_func(self):
        return projection_te(self.rows, self.input_size, self.output_size, self.num_gates,
                             self.lanes, self.dtype)

    def module(self):
        """The IRModule meta_schedule tunes and the database is keyed by."""
        return tvm.IRModule({"main": self.prim_func().with_attr("global_symbol", "main")})

    def arrays(self, rng):
        """Random inputs and an output buffer, in the argument order of both kernels."""
        nb = num_blocks(self.output_size, self.lanes)
        packed = (nb, self.num_gates, self.lanes)
        return [rng.standard_normal(shape).astype(self.dtype) for shape in
                ((self.rows, self.input_size), (nb, self.input_size) + packed[1:], packed)] + \
            [np.zeros((self.rows,) + packed, self.dtype)]


def projection_workload(spec, rows, target):
    """The workload of a chunk of ``rows`` rows of layer ``spec`` (a LayerSpec) on ``target``."""
    lanes = default_schedule(target, spec.num_gates, spec.hidden_size, spec.dtype).lanes
    return ProjectionWorkload(rows, spec.input_size, spec.hidden_size, spec.num_gates, lanes, spec.dtype)


def _runs_here(what, target):
    """A ValueError where ``target``'s code would use instruction sets this CPU lacks (the model's
    own name on a VM that hides some of them: ``-mcpu=znver4`` without AVX-512), rather than the
    illegal instruction that would end the process."""
    from .build import features_missing, host_cpu_features

    lacking = features_missing(target, host_cpu_features())
    if lacking:
        raise ValueError(f"{what}: the target {target} uses {', '.join(lacking)}, which this CPU lacks, so its "
                         "kernels cannot run here; use 'llvm' for this CPU, or measure on a machine that has "
                         "them through an RPC tracker (--rpc-tracker, --rpc-key)")


def tuned_rows(spec, target):
    """The chunk row counts of layer ``spec`` that ``target``'s database has a record in use for:
    one read of the database, so that calls with a new sequence length need not ask the compiler
    about each new row count."""
    workload = projection_workload(spec, 1, target)
    suffix = workload.name[len("rows1"):]
    entries = _read_measurements(schedules_dir() / hardware_key(target))
    names = {name: re.fullmatch(r"rows(\d+)" + re.escape(suffix), name) for name in entries}
    return frozenset(int(match[1]) for name, match in names.items() if match and _in_use(entries[name]))


def chunk_rows(batch, seq_len, row_bytes):
    """The row counts of the projection chunks of a sequence (of projected rows ``row_bytes``
    long): full chunks and the last one."""
    steps = chunk_steps(seq_len, batch, row_bytes)
    rows = {steps * batch}
    if seq_len % steps:
        rows.add(seq_len % steps * batch)
    return sorted(rows)


def layer_workloads(mode, input_size, hidden_size, batch, seq_len, dtype, target, num_layers=1,
                    bidirectional=False):
    """The distinct projection workloads of a (stacked) layer configuration."""
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("batch", batch),
                        ("seq_len", seq_len), ("num_layers", num_layers)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    found = []
    for layer in range(num_layers):
        size = input_size if layer == 0 else hidden_size * (2 if bidirectional else 1)
        spec = LayerSpec(mode, size, hidden_size, np.dtype(dtype).name)
        lanes = projection_workload(spec, 1, target).lanes
        row_bytes = packed_row_bytes(spec.num_gates, hidden_size, lanes, spec.dtype)
        for rows in chunk_rows(batch, seq_len, row_bytes):
            workload = projection_workload(spec, rows, target)
            if workload not in found:
                found.append(workload)
    return found


# ------------------------------------------------------------------------------------------
# Reading a database at compile time


def _read_measurements(directory):
    """workload name -> its entry (a dict), from ``directory``'s measurements. A file that is not
    JSON, or not an object of objects (hand-edited), is reported and read as empty, or without
    the entries that are not objects: a layer call never fails on it."""
    path = directory / MEASUREMENTS
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())
    except ValueError as err:
        warnings.warn(f"lucid_tvm: {path} is not valid JSON ({err}); using default schedules", stacklevel=3)
        return {}
    except OSError as err:  # a directory, no permission
        warnings.warn(f"lucid_tvm: cannot read {path} ({err}); using default schedules", stacklevel=3)
        return {}
    if not isinstance(entries, dict):
        warnings.warn(f"lucid_tvm: {path} holds a {type(entries).__name__}, not an object of workloads; "
                      "using default schedules", stacklevel=3)
        return {}
    bad = [name for name, entry in entries.items() if not isinstance(entry, dict)]
    if bad:
        warnings.warn(f"lucid_tvm: {path}: the entries {bad} are not objects; using default schedules for "
                      "them", stacklevel=3)
    return {name: entry for name, entry in entries.items() if isinstance(entry, dict)}


def _in_use(entry):
    return entry.get("use") is True  # a hand-edited "no" is not a yes


def _workload_hash(mod):
    """The hash meta_schedule's JSON database writes for a workload (database_workload.json)."""
    import tvm_ffi

    return str(tvm_ffi.structural_hash(mod))


def _workload_index(directory, workload_hash):
    """The line of ``workload_hash`` in the database's workload table, or None."""
    with open(directory / "database_workload.json") as table:
        for index, line in enumerate(table):
            if json.loads(line)[0] == workload_hash:
                return index
    return None


def _database(directory):
    """The JSON database in ``directory``, read once per process and version of its files."""
    stamp = tuple((directory / name).stat().st_mtime_ns
                  for name in ("database_workload.json", "database_tuning_record.json"))
    return _read_database(str(directory), stamp)


@functools.lru_cache(maxsize=8)
def _read_database(directory, _stamp):
    from tvm.s_tir import meta_schedule as ms

    return ms.database.JSONDatabase(work_dir=directory, allow_missing=False)


def _reason(err):
    """What went wrong, in a line: the exception's last line (TVM's messages end there after a
    traceback), after its type."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[-1]}" if text else type(err).__name__


def tuned_projection(workload, target):
    """``(PrimFunc, record)`` for ``workload`` from the database of ``target``'s hardware key,
    or None: no database, no record, a tuned time no better than the default kernel's, or a
    record that fails to apply (with a warning). ``record`` says where the schedule came from."""
    directory = schedules_dir() / hardware_key(target)
    entry = _read_measurements(directory).get(workload.name)
    if entry is None or not _in_use(entry):
        return None
    try:
        record = {"database": directory.name, "workload": workload.name,
                  **{key: entry[key] for key in ("workload_hash", "tuned_us", "default_us", "trials")}}
        schedule = _database(directory).query_schedule(workload.module(), target, "main")
        if schedule is None:
            raise ValueError("the database holds no record of this workload")
        record["workload_index"] = _workload_index(directory, entry["workload_hash"])
        return schedule.mod["main"], record
    except Exception as err:  # noqa: BLE001 - any failure to apply means: the default schedule
        warnings.warn(f"lucid_tvm: tuned schedule {directory.name}/{workload.name} cannot be applied "
                      f"({_reason(err)}); "
                      "using the default schedule", stacklevel=2)
        return None


# ------------------------------------------------------------------------------------------
# Tuning


def _default_module(workload, target):
    """The default hand-written projection for the workload's layer, as an IRModule: the variant
    (one thread or all) that the runtime would pick for a chunk of that many rows."""
    w = workload
    schedule = default_schedule(target, w.num_gates, w.output_size, w.dtype)
    parallel = w.rows * w.input_size * w.num_gates * w.output_size >= schedule.parallel_call_macs
    func = recurrent.projection(w.num_gates, w.output_size, w.dtype, w.lanes, schedule.rows, parallel,
                                cores=schedule.cores, wide=schedule.wide)
    return tvm.IRModule({"project": func})


def _times(calls, device, rounds=5):
    """Seconds per call of each ``(module, name, args)`` in ``calls``: the best of ``rounds``
    interleaved rounds of at least 30 ms each, so that a busy machine hits all kernels alike."""
    evaluators = [(module.time_evaluator(name, device, number=1, repeat=1, min_repeat_ms=30), args)
                  for module, name, args in calls]
    best = [float("inf")] * len(calls)
    for _ in range(rounds):
        for index, (evaluator, args) in enumerate(evaluators):
            best[index] = min(best[index], evaluator(*args).mean)
    return best


def _measure(workload, directory, target, rpc_config):
    """(tuned, default) seconds per call of the database's schedule for ``workload`` and of the
    default kernel, on the same device, checking that they agree. Runs in a fresh process: the
    tuning process's own threads (cost model, worker pools) would skew the timings."""
    from tvm.support.popen_pool import PopenWorker

    worker = PopenWorker()
    try:
        worker.send(_measure_here, (workload, str(directory), json.loads(str(target)), rpc_config), timeout=600)
        return worker.recv()
    finally:
        worker.kill()


def _measure_here(workload, directory, target, rpc_config):
    target = tvm.target.Target(target)
    schedule = _database(Path(directory)).query_schedule(workload.module(), target, "main")
    default_mod = _default_module(workload, target)
    tuned, default = compile_module(schedule.mod, target), compile_module(default_mod, target)
    # The default kernel takes the chunk's first row as a trailing int once it has one.
    extra = [0] * (len(default_mod["project"].params) - 4)
    session = rpc_config.connect_server() if rpc_config is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        if session is not None:  # run both on the remote device, which links them (as it does candidates)
            from tvm.support.tar import tar

            modules = []
            for label, built in (("tuned", tuned), ("default", default)):
                path = os.path.join(tmp, f"{label}.tar")
                built.export_library(path, fcompile=tar)
                session.upload(path)
                modules.append(session.load_module(f"{label}.tar"))
            tuned, default = modules
            device = session.cpu()
        else:
            device = tvm.cpu()
        host = workload.arrays(np.random.default_rng(0))
        tuned_args = [tvm.runtime.tensor(a, device) for a in host]
        default_args = [tvm.runtime.tensor(a, device) for a in host]
        tuned["main"](*tuned_args)
        default["project"](*default_args, *extra)
        got, expected = tuned_args[-1].numpy(), default_args[-1].numpy()
        if not np.allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()):
            raise RuntimeError(f"tuned projection {workload.name} disagrees with the default kernel")
        return tuple(_times([(tuned, "main", tuned_args), (default, "project", default_args + extra)], device))


def _build_candidate(mod, target, _params):
    """meta_schedule's default build without its import of every GPU tensor intrinsic, which
    costs about 20 s in each fresh builder process (LocalBuilder starts new ones per batch)."""
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return compile_module(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target)


@contextlib.contextmanager
def _unnamed_log_handlers_removed():
    """meta_schedule configures its logger by handler name and fails on an unnamed handler there
    (pytest's log capture leaves one): detach those while tuning."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    unnamed = [handler for handler in logger.handlers if handler.get_name() is None]
    for handler in unnamed:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in unnamed:
            logger.addHandler(handler)


def _progress_callback(total, say):
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.ir.utils import derived_object

    @derived_object
    class Progress(PyMeasureCallback):
        def __init__(self):
            self.done, self.best = 0, float("inf")

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            for result in runner_results:
                self.done += 1
                if result.run_secs:
                    self.best = min(self.best, statistics.mean(float(s) for s in result.run_secs))
            best = f"{self.best * 1e6:.1f} us" if self.best < float("inf") else "none yet"
            say(f"      trials {self.done}/{total}, best {best}")

    return Progress()


def tune_workload(workload, target, trials, directory, rpc_config=None, say=print):
    """Tune one workload with ``trials`` meta_schedule trials; commit its best record to the
    database in ``directory`` and return its measurements entry."""
    from tvm.s_tir import meta_schedule as ms

    mod = workload.module()
    with tempfile.TemporaryDirectory(prefix="lucid_tvm_tune_") as work_dir, _unnamed_log_handlers_removed():
        runner = (ms.runner.RPCRunner(rpc_config=rpc_config) if rpc_config is not None
                  else ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1)))
        started = time.perf_counter()
        database = ms.tir_integration.tune_tir(
            mod, target, work_dir, max_trials_global=trials, num_trials_per_iter=min(trials, 16),
            builder=ms.builder.LocalBuilder(f_build=_build_candidate, timeout_sec=60),
            runner=runner, seed=0,
            measure_callbacks=ms.MeasureCallback.create("default") + [_progress_callback(trials, say)])
        best = database.query_tuning_record(mod, target, "main")
        if best is None:
            raise RuntimeError(f"tuning {workload.name}: no candidate built and ran; see {work_dir}/logs")
        search_secs = time.perf_counter() - started
    store = _database_for_writing(directory)
    store.commit_tuning_record(ms.database.TuningRecord(
        best.trace, store.commit_workload(mod), best.run_secs, target, best.args_info))
    tuned_secs, default_secs = _measure(workload, directory, target, rpc_config)
    return {
        "workload": asdict(workload),
        "workload_hash": _workload_hash(mod),
        "trials": trials,
        "search_s": round(search_secs, 1),
        "tuned_us": _microseconds(tuned_secs),
        "default_us": _microseconds(default_secs),
        "use": bool(tuned_secs < SPEEDUP_MARGIN * default_secs),
        "measured_on": "rpc" if rpc_config is not None else "local",
    }


def _database_for_writing(directory):
    from tvm.s_tir import meta_schedule as ms

    directory.mkdir(parents=True, exist_ok=True)
    try:
        return ms.database.JSONDatabase(work_dir=str(directory), allow_missing=True)
    except (RuntimeError, ValueError) as err:  # TVM's parse errors of a damaged file
        raise ValueError(f"cannot read the tuning database in {directory} ({_reason(err)}); "
                         "move the damaged file away or tune into another LUCID_TVM_SCHEDULES_DIR") from err


def tune(mode, input_size, hidden_size, batch, seq_len, dtype="float32", target="llvm", trials=32,
         runner=None, num_layers=1, bidirectional=False, retune=False, say=print):
    """Tune the input projections of a layer configuration and write the database.

    ``target``: as for :func:`lucid_tvm.build.parse_target` (``"llvm"`` is this CPU).
    ``runner``: None to measure here, or a ``meta_schedule.runner.RPCConfig`` naming an RPC
    tracker and device key, to measure on a remote device. Workloads already in the database are
    skipped unless ``retune``. Returns the database directory.
    """
    from tvm.s_tir.meta_schedule.runner import RPCConfig

    from .build import parse_target

    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ValueError(f"trials must be a positive int, got {trials!r}")
    if runner is not None and not isinstance(runner, RPCConfig):
        raise TypeError(f"runner: expected None or a meta_schedule RPCConfig, got {type(runner).__name__}")
    target = parse_target(target)
    if target.kind.name != "llvm":
        raise ValueError(f"tune: only CPU (llvm) targets are supported so far, got {target.kind.name}")
    if runner is None:
        _runs_here("tune", target)
    if not target.attrs.get("num-cores"):  # meta_schedule needs it, and would say so only after its imports
        raise ValueError(f"tune: the target {target} names no core count; add -num-cores=N (the "
                         "device's physical cores)")
    directory = schedules_dir() / hardware_key(target)
    _database_for_writing(directory)  # before the search, not after it: where it fails
    workloads = layer_workloads(mode, input_size, hidden_size, batch, seq_len, dtype, target,
                                num_layers, bidirectional)
    measurements = _read_measurements(directory)
    say(f"tuning {len(workloads)} projection workload(s) of {mode} I={input_size} H={hidden_size} "
        f"B={batch} T={seq_len} for {target} into {directory}")
    for index, workload in enumerate(workloads, 1):
        earlier = measurements.get(workload.name)
        if earlier is not None and not retune:
            say(f"[{index}/{len(workloads)}] {workload.name}: already tuned, skipped")
            continue
        say(f"[{index}/{len(workloads)}] {workload.name}: {trials} trials")
        entry = tune_workload(workload, target, trials, directory, runner, say)
        with _measurements_updated(directory) as measurements:
            earlier = measurements.get(workload.name)  # as the file is now: another run may have tuned it
            if earlier is not None and earlier.get("workload_hash") == entry["workload_hash"]:
                # The database keeps the earlier search's records, and its best of all is the one
                # used and timed: the entry counts every search's trials.
                for key in ("trials", "search_s"):
                    if isinstance(earlier.get(key), (int, float)):
                        entry[key] = round(entry[key] + earlier[key], 1)
            measurements[workload.name] = entry
        verdict = "used" if entry["use"] else "not used: not 10% faster than the default kernel"
        say(f"      tuned {entry['tuned_us']} us, default {entry['default_us']} us ({verdict})")
    return directory


def remeasure(target="llvm", runner=None, say=print):
    """Time every workload of the target's database against the default kernel again and
    update its times and ``use`` (tuning on a busy machine leaves noisy times): here, or through
    ``runner`` (an RPCConfig) on the device, which another machine's database needs. Returns
    the database directory."""
    from .build import host_target, parse_target

    target = parse_target(target)
    directory = schedules_dir() / hardware_key(target)
    if runner is None:
        _runs_here("remeasure", target)
    if runner is None and hardware_key(target) != hardware_key(host_target()):
        raise ValueError(f"remeasure: the database {directory.name} is for another machine than this one "
                         f"({hardware_key(host_target())}), whose times would replace the device's; "
                         "measure on the device through an RPC tracker (--rpc-tracker, --rpc-key)")
    names = sorted(_read_measurements(directory))
    if not names:
        say(f"no tuned workloads in {directory}: nothing to measure")
    for index, name in enumerate(names, 1):
        entry = _read_measurements(directory).get(name)
        if entry is None:  # removed meanwhile
            continue
        try:
            tuned, default = _measure(ProjectionWorkload(**entry["workload"]), directory, target, runner)
        except Exception as err:  # noqa: BLE001 - one entry's failure (no record, a hand edit) is reported
            update = {"use": False}
            say(f"[{index}/{len(names)}] {name}: not measured, so not used ({_reason(err)})")
        else:
            update = {"tuned_us": _microseconds(tuned), "default_us": _microseconds(default),
                      "use": bool(tuned < SPEEDUP_MARGIN * default),
                      "measured_on": "rpc" if runner is not None else "local"}
            say(f"[{index}/{len(names)}] {name}: tuned {update['tuned_us']} us, default "
                f"{update['default_us']} us{' (used)' if update['use'] else ''}")
        with _measurements_updated(directory) as measurements:  # after each: an interrupted run keeps its work
            if isinstance(measurements.get(name), dict):
                measurements[name].update(update)
    return directory


@contextlib.contextmanager
def _measurements_updated(directory):
    """The database's measurements as the file holds them now, written back after the block:
    under a lock, so that runs tuning into one database at once keep each other's entries."""
    with file_lock(directory / (MEASUREMENTS + ".lock")):
        measurements = _read_measurements(directory)
        yield measurements
        write_atomic(directory / MEASUREMENTS,
                     lambda tmp: Path(tmp).write_text(json.dumps(measurements, indent=1, sort_keys=True)))

