"""A build with SOURCE_DATE_EPOCH set (as scikit-build-core sets for
reproducible wheels) must compile the same CPU instruction sets as the
installed default build. ggml's own ISA defaults change when that variable is
set (they drop to SSE2), so CMakeLists.txt spells every switch out; what could
go wrong is decided at configure time, so two CMake configure runs of this
checkout - with and without SOURCE_DATE_EPOCH, at the installed build's
baseline - must give ggml the same switches and every ggml source the same
compile command, and the switches must be the installed module's
`cpu_features`. (This replaced a second full build of the package: that
build compiled exactly these commands, and only the commands decide which
instructions come out.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cmake  # the PyPI package (test extra)
import pybind11
import pytest

import jv4

pytestmark = pytest.mark.source

ROOT = Path(__file__).resolve().parent.parent
CMAKE = str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
# ggml's x86 ISA switches (CMakeLists.txt's _isa_opts) and GGML_NATIVE
ISA = ("NATIVE", "SSE42", "AVX", "F16C", "FMA", "BMI2", "AVX2", "AVX_VNNI", "AVX512", "AVX512_VBMI",
       "AVX512_VNNI", "AVX512_BF16", "AMX_TILE", "AMX_INT8", "AMX_BF16")


def _configure(build: Path, baseline: str, sde: str | None) -> tuple[dict, dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "CMAKE_ARGS")}
    if sde is not None:
        env["SOURCE_DATE_EPOCH"] = sde
    proc = subprocess.run(
        [CMAKE, "-S", str(ROOT), "-B", str(build), "-G", "Ninja" if shutil.which("ninja") else "Unix Makefiles",
         f"-DJV4_CPU_BASELINE={baseline}", "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
         f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"],
        env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cache = {}
    for line in (build / "CMakeCache.txt").read_text().splitlines():
        m = re.match(r"GGML_([A-Z0-9_]+):BOOL=(\w+)$", line)
        if m and m.group(1) in ISA:
            cache[m.group(1)] = m.group(2).upper() in ("ON", "TRUE", "1")
    commands = {}
    for entry in json.loads((build / "compile_commands.json").read_text()):
        if "/ggml/" not in entry["file"]:
            continue
        words = entry.get("command") or " ".join(entry["arguments"])
        commands[entry["file"]] = words.replace(str(build), "<build>")
    return cache, commands


def test_source_date_epoch_configures_the_same_cpu_code(tmp_path):
    if os.environ.get("JV4_SANITIZED") == "1":
        pytest.skip("under tools/sanitize.sh the preloaded sanitizer runtimes break CMake's compiler checks")
    info = jv4.build_info()
    baseline = info["cpu_baseline"]
    plain_cache, plain_cmds = _configure(tmp_path / "plain", baseline, None)
    sde_cache, sde_cmds = _configure(tmp_path / "sde", baseline, "1700000000")
    assert sde_cache == plain_cache
    assert plain_cmds and sde_cmds.keys() == plain_cmds.keys()
    differ = [f for f in plain_cmds if plain_cmds[f] != sde_cmds[f]]
    assert differ == [], (differ[:3], plain_cmds[differ[0]] if differ else "")
    # and those switches are what the installed module was compiled with
    # (llama.cpp's feature list names neither SSE4.2 nor the AMX parts but AMX_INT8)
    named = set(ISA) - {"NATIVE", "SSE42", "AMX_TILE", "AMX_BF16"}
    on = {k for k, v in plain_cache.items() if v and k in named}
    assert on == {f for f in info["cpu_features"] if f in named}, (on, info["cpu_features"])
    if sys.platform.startswith("linux") and os.uname().machine == "x86_64" and baseline != "generic":
        assert "AVX2" in on
        assert any("-mavx2" in c for c in plain_cmds.values())
