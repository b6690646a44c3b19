"""The README's examples run as written, one after another as a reader would (the artifact example
uses the first example's module), in a fresh directory."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 3, "a new README example: run it here too"
    monkeypatch.chdir(tmp_path)
    first = {}
    exec(blocks[0], first)
    assert first["output"].shape == (4, 7, 8) and first["h_n"].shape == first["c_n"].shape == (2, 4, 8)
    training = {}
    exec(blocks[1], training)
    assert all(p.grad is not None for p in training["layer"].parameters())
    exec(blocks[2], first)
    assert np.array_equal(first["layer"](first["x"])[0].numpy(), first["lstm"](first["x"])[0].numpy())
