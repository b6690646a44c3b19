"""TVMScript's ``T`` for the kernels, with TVM 0.27's macro expansion made cheap.

Every call of a ``T.macro`` while a prim_func is parsed looks for the parser in the globals of
the frames above it (``ScriptMacro._find_parser_def``). TVM 0.27 gets those frames from
``inspect.getouterframes``, which also reads each frame's source lines and looks up its module:
with the parser's deep recursion (about 130 frames) that cost 4-6 s of every CPU layer module's
7 s to compile, more than TVM's passes and LLVM together (``docs/design.md``, "Compile time").
Walking ``f_back`` visits the same frames in the same order and reads only their globals.
"""

import sys

from tvm.script import tirx as T  # noqa: F401 - what the kernels import from here
from tvm.script.parser.core.parser import ScriptMacro


def _find_parser_def(self):
    """The parser of the prim_func being parsed: the innermost frame whose globals hold it."""
    name = ScriptMacro.parser_object_name
    frame = sys._getframe(1)
    while frame is not None:
        parser = frame.f_globals.get(name)
        if parser is not None:
            return parser
        frame = frame.f_back
    raise RuntimeError(f"{name} not available")


# TVM's own, kept for the test that both find the same parser.
tvm_find_parser_def = ScriptMacro._find_parser_def
ScriptMacro._find_parser_def = _find_parser_def
