"""python/jv4/_core.pyi is generated from the compiled module
(tools/stubgen.py, pybind11-stubgen): it must say what the bindings say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_checked_in_stub_is_the_generated_one():
    pytest.importorskip("pybind11_stubgen")
    import jv4

    if jv4.build_info()["dispatch"]["loaded"] != "_core":
        pytest.skip("a per-level wheel build: the stub is generated from a source build's _core")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "stubgen.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
