"""Warnings that point at the user's line: the first frame outside cachekern, torch's module-call
machinery and contextlib (``with cachekern.patched(...)``), however deep in the library the
warning is raised (a fixed stacklevel points into cachekern whenever the call path changes)."""

import contextlib
import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_TORCH_MODULES = os.sep + os.path.join("torch", "nn", "modules") + os.sep
_CONTEXTLIB = os.path.abspath(contextlib.__file__)


def _internal(filename):
    return filename.startswith(_PACKAGE) or _TORCH_MODULES in filename or filename == _CONTEXTLIB


def warn(message, category=UserWarning):
    depth = 1                          # sys._getframe(1): warn's caller
    frame = sys._getframe(depth)
    while frame is not None and _internal(os.path.abspath(frame.f_code.co_filename)):
        frame = frame.f_back
        depth += 1
    warnings.warn(message, category, stacklevel=depth + 1)
