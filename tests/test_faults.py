"""Faults: a damaged or unwritable kernel cache, two processes compiling at once, bad input in a
subprocess (no crash may take the interpreter down), threads."""

import concurrent.futures
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import assert_close, torch_twin

# Runs one GRU in a fresh process; reports compiles, warnings and the output.
PROBE = textwrap.dedent("""
    import json, warnings
    import numpy as np
    import tvm
    import lucid_tvm, lucid_tvm.nn as nn

    builds = []
    real_build = tvm.tirx.build
    tvm.tirx.build = lambda *a, **k: builds.append(1) or real_build(*a, **k)
    lucid_tvm.seed(0)
    gru = nn.GRU(3, 6)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = gru(x)[0].numpy()
    print(json.dumps({"builds": len(builds), "warnings": [str(w.message) for w in caught],
                      "out": out.tolist()}))
""")


def _probe(cache, wait=True):
    env = {**os.environ, "LUCID_TVM_CACHE_DIR": str(cache)}
    process = subprocess.Popen([sys.executable, "-c", PROBE], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    return _result(process) if wait else process


def _result(process):
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _damage(cache, how):
    (library,) = cache.glob("*.so")
    data = bytearray(library.read_bytes())
    if how == "truncate":
        library.write_bytes(data[: len(data) // 3])
    else:  # flip bytes in the middle: still a loadable-looking file of the same size
        for i in range(len(data) // 2, len(data) // 2 + 64):
            data[i] ^= 0xFF
        library.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "corrupt"])
def test_damaged_cache_is_rebuilt_with_a_warning(tmp_path, how):
    first = _probe(tmp_path)
    assert first["builds"] == 1 and first["warnings"] == []
    _damage(tmp_path, how)
    second = _probe(tmp_path)
    assert second["builds"] == 1
    assert any("discarding cached module" in w for w in second["warnings"])
    np.testing.assert_array_equal(second["out"], first["out"])
    third = _probe(tmp_path)  # the rebuilt file is good again
    assert third["builds"] == 0 and third["warnings"] == []


def test_unwritable_cache_still_computes(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = _probe(blocker / "cache")
    reference = _probe(tmp_path / "good")
    assert any("cannot write the kernel cache" in w for w in result["warnings"])
    np.testing.assert_array_equal(result["out"], reference["out"])


def test_two_processes_compiling_at_once(tmp_path):
    processes = [_probe(tmp_path, wait=False) for _ in range(2)]
    first, second = (_result(p) for p in processes)
    assert first["builds"] + second["builds"] == 1  # the other one waited and loaded the file
    assert first["warnings"] == [] and second["warnings"] == []
    np.testing.assert_array_equal(first["out"], second["out"])


BAD_CASES = textwrap.dedent("""
    import numpy as np
    import lucid_tvm.nn as nn
    import lucid_tvm.tracetorch as tt
    import torch

    gru, lstm, cell = nn.GRU(3, 4, num_layers=2), nn.LSTM(3, 4), nn.LSTMCell(3, 4)
    cases = {
        "rank 1": lambda: gru(np.zeros(3, np.float32)),
        "rank 4": lambda: gru(np.zeros((2, 2, 2, 3), np.float32)),
        "feature size": lambda: gru(np.zeros((5, 2, 7), np.float32)),
        "int dtype": lambda: gru(np.zeros((5, 2, 3), np.int32)),
        "string": lambda: gru("hello"),
        "None input": lambda: gru(None),
        "list input": lambda: gru([[[1.0, 2.0, 3.0]]]),
        "zero-length sequence": lambda: gru(np.zeros((0, 2, 3), np.float32)),
        "hx wrong rank": lambda: gru(np.zeros((5, 2, 3), np.float32), np.zeros(4, np.float32)),
        "hx wrong shape": lambda: gru(np.zeros((5, 2, 3), np.float32), np.zeros((2, 3, 4), np.float32)),
        "hx 2-D for 2 layers": lambda: gru(np.zeros((5, 2, 3), np.float32), np.zeros((2, 4), np.float32)),
        "lstm hx not a tuple": lambda: lstm(np.zeros((5, 2, 3), np.float32), np.zeros((1, 2, 4), np.float32)),
        "lstm hx None inside": lambda: lstm(np.zeros((5, 2, 3), np.float32), (None, "c")),
        "cell rank 3": lambda: cell(np.zeros((1, 2, 3), np.float32)),
        "cell hx string": lambda: cell(np.zeros((2, 3), np.float32), ("h", "c")),
        "huge layer": lambda: nn.LSTM(10 ** 6, 10 ** 6),
        "huge input": lambda: gru(np.broadcast_to(np.zeros(3, np.float32), (10 ** 6, 10 ** 5, 3))),
        "negative size": lambda: nn.GRU(-1, 4),
        "float size": lambda: nn.GRU(3.5, 4),
        "bad mode": lambda: nn.RNNBase("TRANSFORMER", 3, 4),
        "bad dropout": lambda: nn.GRU(3, 4, num_layers=2, dropout=2),
        "tt wrong features": lambda: tt.rnn.GRU(3, 4)(torch.zeros(2, 5)),
        "tt int input": lambda: tt.rnn.LSTM(3, 4)(torch.zeros(2, 3, dtype=torch.int64)),
        "tt None": lambda: tt.rnn.SimpleRNN(3, 4)(None),
    }
    for name, case in cases.items():
        try:
            case()
        except Exception as err:
            print(f"{name}|{type(err).__name__}|{err}")
        else:
            print(f"{name}|no error|")
""")


def test_bad_input_raises_and_never_crashes():
    done = subprocess.run([sys.executable, "-c", BAD_CASES], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr  # a segfault would show here
    results = dict(line.split("|", 1) for line in done.stdout.strip().splitlines())
    assert len(results) == 24
    for name, outcome in results.items():
        kind, message = outcome.split("|", 1)
        expected = {"huge layer": "MemoryError", "huge input": "MemoryError"}.get(name, ("ValueError", "TypeError"))
        assert kind in expected, (name, outcome)
        assert len(message) > 20, (name, outcome)  # says something


def test_threads_match_serial_calls(rng):
    # The stacked one keeps a buffer between its layers per thread (runtime.between_layers).
    layers = [torch_twin(mode, 5, 24, num_layers=layers)[1]
              for mode, layers in (("LSTM", 1), ("GRU", 1), ("RNN_TANH", 1), ("GRU", 3))]
    inputs = [rng.standard_normal((6, 3, 5)).astype(np.float32) for _ in range(12)]
    jobs = [(layers[i % len(layers)], x) for i, x in enumerate(inputs)]
    serial = [layer(x)[0].numpy() for layer, x in jobs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            parallel = list(pool.map(lambda job: job[0](job[1])[0].numpy(), jobs))
            for a, b in zip(parallel, serial):
                np.testing.assert_array_equal(a, b)


def test_kernel_objects_are_made_once_when_threads_ask_first_together():
    """Concurrent first calls of one layer kind share one kernel object (each made its own, and
    a thread's workspace plan, kept per kind, was remade on every call alternating between them:
    2x slower calls)."""
    import threading
    import time

    from lucid_tvm import runtime

    made = []

    def slow_make(*args):
        made.append(args)
        time.sleep(0.05)  # as compiling takes: every thread asks before the first is done
        return object()

    get = runtime._made_once(slow_make)
    start = threading.Barrier(8)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        objects = list(pool.map(lambda _: (start.wait(), get("GRU", 6, 11, "float32"))[1], range(8)))
    assert made == [("GRU", 6, 11, "float32")]
    assert all(o is objects[0] for o in objects)
    get.cache_clear()
    assert get("GRU", 6, 11, "float32") is not objects[0]


def test_a_kernel_object_made_while_a_module_is_registered_is_made_again():
    """It may hold the module registered before (an artifact loaded in another thread meanwhile);
    it was kept, and every later call used the old kernels."""
    import threading

    from lucid_tvm import runtime

    making, finish, first = threading.Event(), threading.Event(), []

    def slow_make(*args):
        making.set()
        finish.wait(60)
        return object()

    get = runtime._made_once(slow_make)
    thread = threading.Thread(target=lambda: first.append(get("GRU", 6, 11, "float32")))
    thread.start()
    try:
        assert making.wait(60)
        runtime.register(("test", "registered meanwhile"), runtime.Compiled(object(), {}))
    finally:
        finish.set()
        thread.join()
        runtime._registry.pop(("test", "registered meanwhile"), None)
    again = get("GRU", 6, 11, "float32")
    assert again is not first[0]
    assert get("GRU", 6, 11, "float32") is again


def test_a_compile_holds_up_no_other_thread(rng):
    """While one thread compiles, another's first call of a compiled layer at a new batch size
    (which looks up the registry) and its making of another kernel object run on: they waited for
    the compile (4.9 s for a new LSTM kind), the registry's lock and the kernel objects' being held
    throughout. Events, not timings: a call held up by the compile would never end here."""
    import threading

    from lucid_tvm import runtime

    ref, ours = torch_twin("GRU", 5, 24)
    ours(rng.standard_normal((3, 2, 5)).astype(np.float32))  # compiled, and called at batch 2
    compiling, finish = threading.Event(), threading.Event()

    def slow_compile():
        compiling.set()
        finish.wait(60)
        return object(), {}

    def slow_make(*args):
        return runtime.compiled(("slow", *args), slow_compile)

    make = runtime._made_once(slow_make)
    runtime._registry[("slow", "second")] = runtime.Compiled(object(), {})  # compiled: nothing to wait for
    slow = threading.Thread(target=make, args=("first",))
    slow.start()
    try:
        assert compiling.wait(60)
        x = rng.standard_normal((3, 7, 5)).astype(np.float32)
        answers = []
        other = threading.Thread(target=lambda: answers.extend([ours(x)[0].numpy(), make("second")]))
        other.start()
        other.join(60)
        assert answers, "the other thread waited for the compile"
        assert_close(answers[0], ref(torch.from_numpy(x))[0])
    finally:
        finish.set()
        slow.join()
        for key in ("first", "second"):
            runtime._registry.pop(("slow", key), None)


def test_threads_on_tracetorch_layers():
    import lucid_tvm.tracetorch as tt

    torch.manual_seed(0)
    layers = [tt.rnn.LSTM(5, 16) for _ in range(5)]
    for layer in layers[1:]:
        layer.load_state_dict(layers[0].state_dict())
    xs = [torch.randn(3, 5) for _ in range(6)]

    def run(layer):
        with torch.no_grad():
            return [layer(x).clone() for x in xs]

    serial = run(layers[0])
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        for outs in pool.map(run, layers[1:]):
            for a, b in zip(outs, serial):
                torch.testing.assert_close(a, b, atol=0, rtol=0)


# A process that ran layers forks (as multiprocessing and torch's DataLoader do on Linux); the child,
# a thread the child starts and the child's own child run them again and must agree with the
# parent, which agrees with torch. A child that hangs is killed by its alarm.
FORKED = textwrap.dedent("""
    import os, pickle, signal, threading
    import numpy as np
    import torch
    import lucid_tvm.nn as nn
    import lucid_tvm.tracetorch as tt

    torch.manual_seed(0)
    ref = torch.nn.LSTM(64, 256).eval()
    ours = nn.LSTM(64, 256).eval()
    ours.load_state_dict(ref.state_dict())
    x = np.random.default_rng(0).standard_normal((20, 16, 64)).astype(np.float32)  # all threads first
    one = np.random.default_rng(1).standard_normal((30, 1, 64)).astype(np.float32)
    cell = tt.rnn.LSTM(64, 128)
    xs = torch.randn(16, 64)

    def run():
        with torch.no_grad():
            cell.zero_states()
            return ours(x)[0].numpy(), ours(one)[0].numpy(), cell(xs).numpy().copy()

    for _ in range(40):  # past the first trials of the other variants
        parent = run()
    with torch.no_grad():
        print("error against torch", np.abs(parent[0] - ref(torch.from_numpy(x))[0].numpy()).max())

    def in_child(depth):
        signal.alarm(60)
        answers = [run() for _ in range(40)][-1:]
        thread = threading.Thread(target=lambda: answers.append(run()))
        thread.start()
        thread.join()
        same = len(answers) == 2 and all(np.array_equal(a, b) for got in answers for a, b in zip(got, parent))
        return same and (depth == 2 or forked(depth + 1))

    def forked(depth):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write, pickle.dumps(in_child(depth)))
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as answer:
            same = answer.read()
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status) == 0 and pickle.loads(same)

    print("children agree", forked(1))
""")


def test_forked_children_run_layers():
    """The child's first parallel kernel on the thread that forked it waited forever for the TVM
    workers that thread had in the parent (runtime._after_fork_in_child)."""
    done = subprocess.run([sys.executable, "-c", FORKED], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    error, agree = done.stdout.strip().splitlines()
    assert float(error.split()[-1]) < 2e-5
    assert agree == "children agree True"


# Another thread is compiling when the process forks: the child, which lacks that thread, must
# still compile (the locks that thread held would never be released) and make its kernel objects.
FORKED_WHILE_COMPILING = textwrap.dedent("""
    import os, signal, threading
    from lucid_tvm import runtime

    compiling, finish, parent = threading.Event(), threading.Event(), os.getpid()

    def slow_compile():  # in the parent; quick in the child
        if os.getpid() == parent:
            compiling.set()
            finish.wait(60)
        return object(), {}

    make = runtime._made_once(lambda *key: runtime.compiled(("fork test", *key), slow_compile))
    thread = threading.Thread(target=make, args=("slow",))
    thread.start()
    compiling.wait(60)
    pid = os.fork()
    if pid == 0:
        signal.alarm(60)
        made = make("slow"), runtime.compiled(("fork test", "other"), lambda: (object(), {}))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    finish.set()
    thread.join()
    print("child exit", os.waitstatus_to_exitcode(status))
""")


def test_forked_while_compiling():
    done = subprocess.run([sys.executable, "-c", FORKED_WHILE_COMPILING], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "child exit 0"


def test_memory_stays_flat():
    """A short version of scripts/leak_check.py."""
    done = subprocess.run([sys.executable, "scripts/leak_check.py", "--calls", "3000", "--json"],
                          capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["growth_mib"] < 8, report
