"""Tuned input projections: hardware keys, records found and used from the committed database
(the manifest says so), fallback with a warning for a broken record, tuning through TVM's RPC
tracker and server, and the ``lucid-tvm tune`` command. Only the last two tune, with 2 trials."""

import contextlib
import json
import re
import shutil
import socket

import numpy as np
import pytest
import torch
import tvm
from conftest import assert_close, torch_twin

import lucid_tvm
from lucid_tvm import cli, runtime, tuning
from lucid_tvm.build import host_target, parse_target
from lucid_tvm.kernels.spec import LayerSpec

MODE_OF_GATES = {1: "RNN_TANH", 3: "GRU", 4: "LSTM"}


def test_hardware_key_names_kind_model_and_cores():
    key = tuning.hardware_key(host_target())
    assert re.fullmatch(r"llvm-[\w.]+(-[\w.]+)*-\d+c", key), key
    assert key == f"llvm-{host_target().attrs['mcpu']}-{host_target().attrs['num-cores']}c"
    assert tuning.hardware_key(parse_target("llvm -mcpu=znver3 -num-cores=8")) == "llvm-znver3-8c"
    assert tuning.hardware_key(parse_target("llvm -mtriple=aarch64-linux-gnu -num-cores=4")) == "llvm-aarch64-4c"
    assert tuning.hardware_key(parse_target("cuda -arch=sm_90")) == "cuda-sm_90"
    with pytest.raises(TypeError, match="tvm.target.Target"):
        tuning.hardware_key("llvm")


def test_workloads_follow_the_projection_chunks():
    lstm_128 = 4 * 128 * 4  # bytes of a projected row: 256 rows a chunk
    assert tuning.chunk_rows(1, 150, lstm_128) == [150]
    assert tuning.chunk_rows(16, 150, lstm_128) == [96, 256]  # 9 chunks of 16 steps, then 6 steps
    assert tuning.chunk_rows(64, 25, lstm_128) == [64, 256]
    assert tuning.chunk_rows(32, 100, 128 * 4) == [128, 1024]  # RNN 128: 512 KB of rows, 3 chunks of 32 steps
    workloads = tuning.layer_workloads("LSTM", 40, 128, 32, 100, "float32", host_target(), num_layers=2)
    assert [(w.rows, w.input_size, w.output_size, w.num_gates) for w in workloads] == \
        [(128, 40, 128, 4), (256, 40, 128, 4), (128, 128, 128, 4), (256, 128, 128, 4)]
    with pytest.raises(ValueError, match="batch must be a positive int"):
        tuning.layer_workloads("GRU", 4, 8, 0, 5, "float32", host_target())


def test_projection_te_matches_numpy(rng):
    workload = tuning.ProjectionWorkload(5, 7, 20, 3, 16, "float32")
    x, w, b, xp = workload.arrays(rng)
    args = [tvm.runtime.tensor(a) for a in (x, w, b, xp)]
    tvm.tirx.build(workload.module(), target=host_target())["main"](*args)
    expected = np.einsum("ik,nkgl->ingl", x, w) + b
    np.testing.assert_allclose(args[-1].numpy(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="rows must be at least 1"):
        tuning.ProjectionWorkload(0, 7, 20, 3, 16, "float32").prim_func()


def _current(workload):
    """Whether today's default kernels still ask for this workload (a schedule change, e.g. of the
    lanes per block, makes older records unused)."""
    spec = LayerSpec(MODE_OF_GATES[workload["num_gates"]], workload["input_size"], workload["output_size"],
                     workload["dtype"])
    return tuning.projection_workload(spec, workload["rows"], host_target()).lanes == workload["lanes"]


def _this_cpu():
    """The host target's CPU, with no core count: its -mcpu and, on a VM that hides some of that
    model's features (AVX-512), the -mattr that turns them off."""
    here = host_target().attrs
    return {"kind": "llvm", **{key: here[key] for key in ("mcpu", "mattr") if here.get(key)}}


def _committed_current_workload():
    """(directory, workload): a committed database and its smallest record that today's default
    kernels ask for on this CPU. Its trace replays on any CPU with the same vector lanes, so a
    database committed for another model serves as well."""
    found = [(path.parent, entry["workload"]) for path in sorted(tuning.schedules_dir().glob(f"*/{tuning.MEASUREMENTS}"))
             if path.parent.name.startswith("llvm-")
             for entry in json.loads(path.read_text()).values()
             if entry["workload"]["rows"] <= 256 and _current(entry["workload"])]
    if not found:
        pytest.skip("no committed record for today's default kernels on this CPU's vector lanes")
    return min(found, key=lambda f: f[1]["rows"] * f[1]["input_size"] * f[1]["output_size"] * f[1]["num_gates"])


def _database_using(committed, workload, directory):
    """A copy of the ``committed`` database in ``directory`` with only ``workload``'s record in use."""
    shutil.copytree(committed, directory)
    measurements = json.loads((directory / tuning.MEASUREMENTS).read_text())
    for entry in measurements.values():
        entry["use"] = entry["workload"] == workload
    (directory / tuning.MEASUREMENTS).write_text(json.dumps(measurements))


def test_committed_record_is_found_used_and_exported(monkeypatch, tmp_path, rng):
    """A committed record, marked in use in a copy of the database, is found, applied to the
    projection (its trace replayed), gives torch's answers and is exported as tuned. It is marked
    by hand because whether a record beats the default kernel is the machine's to say: since the
    default projection runs a block of weights against all rows, none here does
    (``scripts/tune.py --remeasure``)."""
    committed, workload = _committed_current_workload()
    _database_using(committed, workload, tmp_path / tuning.hardware_key(host_target()))
    monkeypatch.setenv("LUCID_TVM_SCHEDULES_DIR", str(tmp_path))
    runtime.layer_kernel.cache_clear()  # kernels read which records are in use once
    mode = MODE_OF_GATES[workload["num_gates"]]
    # One sequence of `rows` steps at batch 1 is one projection chunk of exactly `rows` rows.
    ref, ours = torch_twin(mode, workload["input_size"], workload["output_size"])
    x = rng.standard_normal((workload["rows"], 1, workload["input_size"])).astype(np.float32)
    try:
        with runtime.recording() as used:
            out, _ = ours(x)
        path = lucid_tvm.export(ours, tmp_path / "artifact", example_input=x)
    finally:
        runtime.layer_kernel.cache_clear()
    identity = ("projection", mode, workload["input_size"], workload["output_size"], workload["rows"], "float32")
    assert identity in used
    with torch.no_grad():
        assert_close(out.numpy(), ref(torch.from_numpy(x))[0])
    kernels = json.loads((path / "manifest.json").read_text())["kernels"]
    sources = {tuple(k["identity"]): k for k in kernels}
    assert sources[identity]["schedule_source"] == "tuned"
    record = sources[identity]["record"]
    assert record["database"] == tuning.hardware_key(host_target())
    assert record["workload"] == tuning.projection_workload(
        LayerSpec(mode, workload["input_size"], workload["output_size"], "float32"), workload["rows"],
        host_target()).name
    assert all(k["schedule_source"] == "default" for i, k in sources.items() if i[0] == "layer")


def test_export_for_another_cpu_ships_its_tuned_projections(monkeypatch, tmp_path, rng):
    """An artifact for another CPU (here: this model with one core more, so that it loads here)
    carries the projections that CPU's database has in use for the layer, whatever row counts
    the example ran: this machine's database has none, and the example runs 3 rows."""
    committed, workload = _committed_current_workload()
    other = parse_target({**_this_cpu(), "num-cores": int(host_target().attrs["num-cores"]) + 1})
    _database_using(committed, workload, tmp_path / tuning.hardware_key(other))
    monkeypatch.setenv("LUCID_TVM_SCHEDULES_DIR", str(tmp_path))
    runtime.layer_kernel.cache_clear()
    mode, rows = MODE_OF_GATES[workload["num_gates"]], workload["rows"]
    ref, ours = torch_twin(mode, workload["input_size"], workload["output_size"])
    try:
        path = lucid_tvm.export(ours, tmp_path / "artifact", target=other,
                                example_input=np.zeros((3, 1, workload["input_size"]), np.float32))
    finally:
        runtime.layer_kernel.cache_clear()
    identity = ("projection", mode, workload["input_size"], workload["output_size"], rows, "float32")
    kernels = {tuple(k["identity"]): k for k in json.loads((path / "manifest.json").read_text())["kernels"]}
    assert kernels[identity]["schedule_source"] == "tuned"
    assert kernels[identity]["record"]["database"] == tuning.hardware_key(other)
    # Loaded here, a sequence of that many steps at batch 1 (one chunk of that many rows) runs it.
    loaded = lucid_tvm.load(path)
    x = rng.standard_normal((rows, 1, workload["input_size"])).astype(np.float32)
    with runtime.recording() as used:
        out, _ = loaded(x)
    assert identity in used
    with torch.no_grad():
        assert_close(out.numpy(), ref(torch.from_numpy(x))[0])


def _write_broken_database(directory, workload):
    """A database whose only record for ``workload`` replays a trace made for another function
    (its block is named ``other``), so applying it fails."""
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    a = te.placeholder((4,), name="a")
    other = te.create_prim_func([a, te.compute((4,), lambda i: a[i] + 1, name="other")])
    schedule = tvm.s_tir.Schedule(tvm.IRModule({"main": other}))
    schedule.get_loops(schedule.get_sblock("other"))
    database = tuning._database_for_writing(directory)
    mod = workload.module()
    database.commit_tuning_record(ms.database.TuningRecord(
        schedule.trace, database.commit_workload(mod), [1e-6], host_target()))
    entry = {"workload": {}, "workload_hash": tuning._workload_hash(mod), "trials": 1,
             "tuned_us": 1.0, "default_us": 2.0, "use": True}
    (directory / tuning.MEASUREMENTS).write_text(json.dumps({workload.name: entry}))


def test_broken_record_falls_back_to_default_with_warning(monkeypatch, tmp_path, rng):
    monkeypatch.setenv("LUCID_TVM_SCHEDULES_DIR", str(tmp_path / "schedules"))
    spec = LayerSpec("GRU", 5, 20, "float32")
    workload = tuning.projection_workload(spec, 9, host_target())
    _write_broken_database(tmp_path / "schedules" / tuning.hardware_key(host_target()), workload)
    ref, ours = torch_twin("GRU", 5, 20)
    x = rng.standard_normal((9, 1, 5)).astype(np.float32)
    with pytest.warns(UserWarning, match="cannot be applied.*using the default schedule"), runtime.recording() as used:
        out, _ = ours(x)
    assert not any(identity[0] == "projection" for identity in used)
    with torch.no_grad():
        assert_close(out.numpy(), ref(torch.from_numpy(x))[0])


def test_record_slower_than_default_is_not_used(monkeypatch, tmp_path):
    monkeypatch.setenv("LUCID_TVM_SCHEDULES_DIR", str(tmp_path))
    workload = tuning.projection_workload(LayerSpec("LSTM", 3, 16, "float32"), 4, host_target())
    directory = tmp_path / tuning.hardware_key(host_target())
    directory.mkdir()
    (directory / tuning.MEASUREMENTS).write_text(json.dumps(
        {workload.name: {"use": False, "tuned_us": 9.0, "default_us": 1.0}}))
    assert tuning.tuned_projection(workload, host_target()) is None


@pytest.mark.parametrize("content,warning", [("[]", "holds a list"), ("null", "holds a NoneType"),
                                             ("{NAME: true}", "are not objects"), ('{XNAME: {"use": true}}', None),
                                             ('{NAME: {"use": "no"}}', None)])
def test_hand_edited_measurements_never_fail_a_layer(content, warning, monkeypatch, tmp_path, rng):
    """JSON of the wrong shape is reported and read as no records; a "use" that is not true is not
    used: the layer runs its default schedule."""
    monkeypatch.setenv("LUCID_TVM_SCHEDULES_DIR", str(tmp_path))
    spec = LayerSpec("LSTM", 3, 16, "float32")
    workload = tuning.projection_workload(spec, 4, host_target())
    directory = tmp_path / tuning.hardware_key(host_target())
    directory.mkdir()
    named = content.replace("XNAME", json.dumps(workload.name.replace("rows4", "rowsX", 1)))
    (directory / tuning.MEASUREMENTS).write_text(named.replace("NAME", json.dumps(workload.name)))
    with pytest.warns(UserWarning, match=warning) if warning else contextlib.nullcontext():
        assert tuning.tuned_rows(spec, host_target()) == frozenset()
        assert tuning.tuned_projection(workload, host_target()) is None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tuning_through_rpc_tracker_and_server(monkeypatch, tmp_path):
    pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado (the `tune` extra)")
    from tvm import rpc
    from tvm.rpc.tracker import Tracker
    from tvm.s_tir.meta_schedule.runner import RPCConfig

    monkeypatch.setenv("LUCID_TVM_SCHEDULES_DIR", str(tmp_path))
    port = _free_port()
    tracker = Tracker("127.0.0.1", port=port, port_end=port + 50, silent=True)
    server = rpc.Server("127.0.0.1", port=port + 51, port_end=port + 100, key="lucid-test-cpu",
                        tracker_addr=("127.0.0.1", tracker.port), silent=True)
    try:
        config = RPCConfig(tracker_host="127.0.0.1", tracker_port=tracker.port,
                           tracker_key="lucid-test-cpu", session_timeout_sec=60)
        lines = []
        directory = tuning.tune("RNN_TANH", 8, 16, 1, 8, trials=2, runner=config, say=lines.append)
    finally:
        server.terminate()
        tracker.terminate()
    measurements = json.loads((directory / tuning.MEASUREMENTS).read_text())
    [entry] = measurements.values()
    assert entry["measured_on"] == "rpc" and entry["trials"] == 2
    assert entry["tuned_us"] > 0 and entry["default_us"] > 0
    assert (directory / "database_tuning_record.json").read_text().strip()
    assert any("trials 2/2" in line for line in lines)
    # The record applies: a usable one comes back with its record, an unused one as None.
    workload = tuning.projection_workload(LayerSpec("RNN_TANH", 8, 16, "float32"), 8, host_target())
    found = tuning.tuned_projection(workload, host_target())
    assert (found is not None) == entry["use"]


def test_cli_tune_writes_the_database(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LUCID_TVM_SCHEDULES_DIR", str(tmp_path))
    argv = ["tune", "LSTM", "--input-size", "4", "--hidden-size", "16", "--batch", "2", "--seq-len", "3",
            "--trials", "2"]
    name = tuning.projection_workload(LayerSpec("LSTM", 4, 16, "float32"), 6, host_target()).name
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"[1/1] {name}: 2 trials" in out and "trials 2/2" in out
    directory = tmp_path / tuning.hardware_key(host_target())
    assert f"database: {directory}" in out
    assert name in json.loads((directory / tuning.MEASUREMENTS).read_text())
    # A second run finds the workload and skips it.
    assert cli.main(argv) == 0
    assert "already tuned, skipped" in capsys.readouterr().out
    assert cli.main(["tune", "GRU", "--input-size", "4", "--hidden-size", "8", "--batch", "1",
                     "--seq-len", "2", "--rpc-tracker", "127.0.0.1:9190"]) == 2
    assert "--rpc-key" in capsys.readouterr().err


def test_tune_refuses_what_would_fail_after_the_search(monkeypatch, tmp_path):
    """A target without a core count (meta_schedule needs one) and a schedules directory that
    cannot be made are refused before any search starts, not after its minutes."""
    monkeypatch.setattr(tuning, "tune_workload", lambda *args, **kwargs: pytest.fail("the search started"))
    monkeypatch.setenv("LUCID_TVM_SCHEDULES_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="-num-cores=N"):
        tuning.tune("GRU", 4, 8, 1, 2, target=_this_cpu())
    directory = tmp_path / tuning.hardware_key(host_target())
    directory.mkdir()
    (directory / "database_workload.json").write_text("garbage\n")
    with pytest.raises(ValueError, match=rf"cannot read the tuning database in {re.escape(str(directory))} "):
        tuning.tune("GRU", 4, 8, 1, 2)  # TVM's parse error came after the search, naming no file
    (tmp_path / "a file").write_text("")
    monkeypatch.setenv("LUCID_TVM_SCHEDULES_DIR", str(tmp_path / "a file"))
    with pytest.raises(OSError):
        tuning.tune("GRU", 4, 8, 1, 2)


def test_runs_tuning_into_one_database_at_once_keep_each_others_entries(monkeypatch, tmp_path):
    """Each run read the measurements once, before its searches, and wrote them whole after each:
    the run that wrote last dropped the other's entries. Now each entry goes into the file as it
    is then, under a lock."""
    monkeypatch.setenv("LUCID_TVM_SCHEDULES_DIR", str(tmp_path))
    directory = tmp_path / tuning.hardware_key(host_target())
    other = tuning.projection_workload(LayerSpec("LSTM", 4, 16, "float32"), 2, host_target()).name
    searched = {"workload_hash": "7", "trials": 2, "search_s": 1.0, "tuned_us": 1.0, "default_us": 2.0, "use": True}

    def search_while_another_run_writes(workload, *args, **kwargs):
        (directory / tuning.MEASUREMENTS).write_text(json.dumps({other: dict(searched)}))
        return dict(searched)

    monkeypatch.setattr(tuning, "tune_workload", search_while_another_run_writes)
    tuning.tune("GRU", 4, 8, 1, 2, trials=2, say=lambda line: None)
    mine = tuning.projection_workload(LayerSpec("GRU", 4, 8, "float32"), 2, host_target()).name
    assert sorted(json.loads((directory / tuning.MEASUREMENTS).read_text())) == sorted([other, mine])


def test_unreadable_measurements_never_fail_a_layer(monkeypatch, tmp_path):
    monkeypatch.setenv("LUCID_TVM_SCHEDULES_DIR", str(tmp_path))
    spec = LayerSpec("LSTM", 3, 16, "float32")
    (tmp_path / tuning.hardware_key(host_target()) / tuning.MEASUREMENTS).mkdir(parents=True)
    with pytest.warns(UserWarning, match="cannot read .*measurements.json"):
        assert tuning.tuned_rows(spec, host_target()) == frozenset()


def test_retune_counts_every_search_of_the_record_in_use(monkeypatch, tmp_path):
    """The database keeps the earlier search's records and uses the best of all, so a retuned
    entry counts both searches' trials and seconds."""
    monkeypatch.setenv("LUCID_TVM_SCHEDULES_DIR", str(tmp_path))
    workload = tuning.projection_workload(LayerSpec("GRU", 4, 8, "float32"), 2, host_target())
    directory = tmp_path / tuning.hardware_key(host_target())
    directory.mkdir()
    earlier = {"workload_hash": "7", "trials": 3, "search_s": 10.0, "use": False}
    (directory / tuning.MEASUREMENTS).write_text(json.dumps({workload.name: earlier}))
    searched = {"workload_hash": "7", "trials": 2, "search_s": 5.5, "tuned_us": 1.0, "default_us": 2.0, "use": True}
    monkeypatch.setattr(tuning, "tune_workload", lambda *args, **kwargs: dict(searched))
    tuning.tune("GRU", 4, 8, 1, 2, trials=2, retune=True, say=lambda line: None)
    entry = json.loads((directory / tuning.MEASUREMENTS).read_text())[workload.name]
    assert (entry["trials"], entry["search_s"], entry["use"]) == (5, 15.5, True)


def test_remeasure_reports_an_entry_it_cannot_measure_and_keeps_its_progress(monkeypatch, tmp_path):
    """An entry without a database record is reported and not used, the others are measured, and
    each result is written as it comes: an interrupted run keeps what it measured."""
    monkeypatch.setenv("LUCID_TVM_SCHEDULES_DIR", str(tmp_path))
    directory = tmp_path / tuning.hardware_key(host_target())
    directory.mkdir()
    names = [tuning.projection_workload(LayerSpec("GRU", 4, 8, "float32"), rows, host_target()).name
             for rows in (1, 2, 3)]
    (directory / tuning.MEASUREMENTS).write_text(json.dumps({
        name: {"workload": {"rows": rows, "input_size": 4, "output_size": 8, "num_gates": 3, "lanes": 16,
                            "dtype": "float32"}, "tuned_us": 9.0, "default_us": 9.0, "use": True}
        for rows, name in zip((1, 2, 3), names)}))

    def measure(workload, *args):
        if workload.rows == 1:
            raise ValueError("the database holds no record of this workload")
        if workload.rows == 3:
            raise KeyboardInterrupt
        return 1e-6, 2e-6

    monkeypatch.setattr(tuning, "_measure", measure)
    said = []
    with pytest.raises(KeyboardInterrupt):
        tuning.remeasure(say=said.append)
    entries = json.loads((directory / tuning.MEASUREMENTS).read_text())
    assert entries[names[0]]["use"] is False and "holds no record" in said[0]
    assert (entries[names[1]]["tuned_us"], entries[names[1]]["default_us"], entries[names[1]]["use"]) == (1.0, 2.0, True)
    assert entries[names[1]]["measured_on"] == "local"
    assert entries[names[2]]["tuned_us"] == 9.0  # not measured yet


def test_remeasure_times_another_machines_database_on_that_machine_only(monkeypatch, tmp_path):
    """Timed here, a board's database got this machine's times (and, for another architecture,
    every record switched off as failing)."""
    monkeypatch.setenv("LUCID_TVM_SCHEDULES_DIR", str(tmp_path))
    monkeypatch.setattr(tuning, "_measure", lambda *args: pytest.fail("measured"))
    with pytest.raises(ValueError, match="remeasure: the database llvm-cortex-a72-4c is for another machine .*--rpc-tracker"):
        tuning.remeasure("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -num-cores=4")
    said = []
    tuning.remeasure(say=said.append)  # this machine's, with nothing in it: said, not silent
    assert said == [f"no tuned workloads in {tmp_path / tuning.hardware_key(host_target())}: nothing to measure"]
    assert cli.rpc_runner(None, None) is None
    with pytest.raises(ValueError, match="--rpc-key needs --rpc-tracker"):
        cli.rpc_runner(None, "board")  # it was ignored, and the kernels timed here


def test_tune_script_passes_its_target(monkeypatch):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("tune_script", Path(__file__).parent.parent / "scripts" / "tune.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    calls = []
    monkeypatch.setattr(tuning, "remeasure", lambda **kwargs: calls.append(("remeasure", kwargs)))
    monkeypatch.setattr(tuning, "tune", lambda *args, **kwargs: calls.append(("tune", kwargs)))
    assert script.main(["--remeasure", "--target", "llvm -mcpu=znver3 -num-cores=8"]) == 0
    assert calls == [("remeasure", {"target": "llvm -mcpu=znver3 -num-cores=8", "runner": None})]
    calls.clear()
    assert script.main(["--remeasure", "--rpc-tracker", "127.0.0.1:9190", "--rpc-key", "board"]) == 0
    [(_, kwargs)] = calls
    assert (kwargs["runner"].tracker_port, kwargs["runner"].tracker_key) == (9190, "board")
    calls.clear()
    assert script.main(["--benchmark-shapes", "--trials", "3", "--target", "llvm -mcpu=znver3 -num-cores=8"]) == 0
    assert len(calls) == len(script.BENCHMARK_SHAPES) * len(script.BENCHMARK_MODES)
    assert all(kwargs["target"] == "llvm -mcpu=znver3 -num-cores=8" and kwargs["trials"] == 3 for _, kwargs in calls)


def test_measured_times_keep_four_significant_digits():
    """A tiny projection's times rounded to hundredths of a us read 0.02 and 0.02 where the tuned
    one was used for being 10% faster."""
    assert (tuning._microseconds(2.2e-8), tuning._microseconds(1.95e-8)) == (0.022, 0.0195)
    assert tuning._microseconds(0.0123456) == 12350.0


@pytest.mark.parametrize("run", ["tune", "remeasure"])
def test_measuring_here_refuses_a_target_this_cpu_cannot_run(monkeypatch, run):
    """A CPU model's own name on a VM that hides some of its features (znver4 without AVX-512)
    passes for this machine (one database directory), but its kernels would die of an illegal
    instruction: a ValueError instead, naming the features."""
    from lucid_tvm import build

    monkeypatch.setattr(build, "host_cpu_features", lambda: {"avx512f": False, "avx2": True, "fma": True})
    call = {"tune": lambda: tuning.tune("GRU", 8, 8, 1, 4, target="llvm -mcpu=znver4 -num-cores=2"),
            "remeasure": lambda: tuning.remeasure("llvm -mcpu=znver4 -num-cores=2")}[run]
    with pytest.raises(ValueError, match="avx512f, which this CPU lacks"):
        call()
