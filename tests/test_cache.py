"""Compiled kernels are cached in memory and on disk, shared across processes, keyed by content."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tvm
    import lucid_tvm, lucid_tvm.nn as nn

    builds = []
    real_build = tvm.tirx.build
    tvm.tirx.build = lambda *a, **k: builds.append(1) or real_build(*a, **k)
    lucid_tvm.seed(0)
    gru = nn.GRU(5, 11, num_layers=2)
    x = np.random.default_rng(0).standard_normal((7, 3, 5)).astype(np.float32)
    out = gru(x)[0].numpy()
    first = len(builds)
    gru(np.concatenate([x, x]))  # a new sequence length
    gru(x[:, :1])                # a new batch size
    print(json.dumps({"builds": first, "later_builds": len(builds) - first, "out": out.tolist()}))
""")


def _run(cache):
    env = {**os.environ, "LUCID_TVM_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_disk_cache_shared_across_processes(tmp_path):
    cache = tmp_path / "kernels"
    first = _run(cache)
    assert first["builds"] == 2  # two layer shapes: (5 -> 11) and (11 -> 11)
    assert first["later_builds"] == 0  # new T and B reuse the same modules
    assert len(list(cache.glob("*.so"))) == 2
    second = _run(cache)
    assert second["builds"] == 0 and second["later_builds"] == 0
    np.testing.assert_array_equal(np.array(first["out"]), np.array(second["out"]))
