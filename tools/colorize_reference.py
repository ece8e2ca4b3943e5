"""Import the authors' reference colorization code (PyPI rz-colorization, package ``colorizers``).

Tests and benchmarks only. Its modules import IPython (unused) at the top; when IPython is absent a stand-in
is put in place just for the import.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

INSTALL_HINT = "pip install -r requirements-test.txt (rz-colorization==1.0.5)"


def import_colorizers():
    stubbed = importlib.util.find_spec("IPython") is None
    if stubbed:
        sys.modules["IPython"] = types.SimpleNamespace(embed=None)
    try:
        return importlib.import_module("colorizers")
    finally:
        if stubbed:
            sys.modules.pop("IPython", None)
