"""The kernels' TVMScript macros expand without TVM 0.27's slow frame inspection, to the same TIR."""

import inspect

import tvm
from tvm.script.parser.core.parser import ScriptMacro

from lucid_tvm.kernels import recurrent, tvmscript


def _projection():
    return recurrent.projection(4, 24, "float32", 16, 6, parallel=True)


def test_macros_expand_without_inspecting_outer_frames(monkeypatch):
    """TVM's frame search would call ``inspect.getouterframes`` once per macro expansion (13
    here); ``T.prim_func`` itself looks at its caller's frames once."""
    calls = []
    getouterframes = inspect.getouterframes

    def counted(*args, **kwargs):
        calls.append(1)
        return getouterframes(*args, **kwargs)

    monkeypatch.setattr(inspect, "getouterframes", counted)
    assert isinstance(_projection(), tvm.tirx.PrimFunc)
    assert len(calls) == 1


def test_same_function_as_with_tvms_frame_search(monkeypatch):
    ours = _projection()
    monkeypatch.setattr(ScriptMacro, "_find_parser_def", tvmscript.tvm_find_parser_def)
    tvm.ir.assert_structural_equal(ours, _projection())
