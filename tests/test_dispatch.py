"""Runtime CPU dispatch: which compiled build `import jv4` loads.

The choice itself is a pure function tested here on made-up CPUs; the
per-level builds (present in x86-64 wheels, or a JV4_CPU_VARIANTS build) are
checked on this machine: each one this CPU supports loads when forced, gives
the vectors of the transformers reference, and holds no instruction above
its level (tools/check_isa.py, objdump)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import jv4
from jv4._load import LEVELS, choose

ROOT = Path(__file__).resolve().parent.parent
V2 = {f: True for f in LEVELS[2][2]}
V3 = dict(V2, **{f: True for f in LEVELS[1][2]})
ZEN4 = dict(V3, **{f: True for f in LEVELS[0][2]})
ALL = ["avx512", "x86-64-v3", "x86-64-v2"]


def test_best_supported_level_first_with_fallbacks():
    assert choose(ZEN4, ALL)[0] == ["avx512", "x86-64-v3", "x86-64-v2"]
    assert choose(V3, ALL)[0] == ["x86-64-v3", "x86-64-v2"]
    assert choose(V2, ALL)[0] == ["x86-64-v2"]
    assert choose(ZEN4, ["x86-64-v2", "x86-64-v3"])[0] == ["x86-64-v3", "x86-64-v2"]


def test_avx512_needs_the_os_to_save_zmm_state():
    no_os_zmm = dict(ZEN4, os_zmm=False)  # e.g. an OS that has not enabled AVX-512 state
    assert choose(no_os_zmm, ALL)[0][0] == "x86-64-v3"
    no_bf16 = dict(ZEN4, avx512bf16=False)  # AVX-512 without BF16 (Skylake-X, Ice Lake)
    assert choose(no_bf16, ALL)[0][0] == "x86-64-v3"


def test_forcing_a_level():
    order, reason, _ = choose(ZEN4, ALL, "x86-64-v2")
    assert order == ["x86-64-v2"] and "JV4_CPU=x86-64-v2" in reason
    with pytest.raises(ImportError, match="cannot run it; missing os_ymm, avx, avx2"):
        choose(V2, ALL, "x86-64-v3")
    with pytest.raises(ImportError, match="must be 'auto' or one of avx512, x86-64-v3, x86-64-v2"):
        choose(ZEN4, ALL, "sse9")
    with pytest.raises(ImportError, match="no build for it"):
        choose(ZEN4, ["x86-64-v2"], "avx512")
    with pytest.raises(ImportError, match="x86-64-v2 \\(SSE4.2\\) is the minimum"):
        choose({}, ALL)


def test_build_info_says_what_was_loaded_and_why():
    d = jv4.build_info()["dispatch"]
    assert d["loaded"] in ("_core", "_core_v2", "_core_v3", "_core_avx512") and d["reason"]


def _levels_here() -> list:
    d = jv4.build_info()["dispatch"]
    if d["loaded"] == "_core":
        pytest.skip("this jv4 is a source build with one module (no per-level builds to dispatch between); "
                    "the wheel's tiers in .ci/wheel run it")
    return [lvl for lvl in d["available"] if lvl in d["supported"]]


@pytest.mark.numerics
@pytest.mark.levels
def test_each_supported_level_loads_when_forced_and_embeds_like_the_reference(make_gguf, reference):
    from conftest import cosines
    from corpus import CORPUS

    texts = CORPUS[:20]
    want = reference(texts, "Query: ")
    for level in _levels_here():
        code = ("import json, sys, jv4; m = jv4.Model(sys.argv[1]); "
                "print(json.dumps({'d': jv4.build_info()['dispatch'], "
                "'v': m.embed(json.loads(sys.argv[2])).tolist()}))")
        proc = subprocess.run([sys.executable, "-c", code, str(make_gguf()), json.dumps(texts)],
                              env=dict(os.environ, JV4_CPU=level), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["d"]["level"] == level and "forced" in out["d"]["reason"]
        import numpy as np

        assert cosines(np.array(out["v"]), want).min() >= 0.99999, level


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is needed to disassemble")
@pytest.mark.numerics
@pytest.mark.levels
def test_no_build_holds_an_instruction_above_its_level():
    _levels_here()
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "check_isa.py"), "--installed"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "x86-64-v2: ok" in proc.stdout
