"""A build with SOURCE_DATE_EPOCH set (as scikit-build-core sets for
reproducible wheels) must compile the same CPU instruction sets as the
installed default build. This builds a second wheel (minutes on 2 cores);
set JV4_SKIP_REBUILD_TESTS=1 to skip it in a quick local loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import jv4

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(os.environ.get("JV4_SKIP_REBUILD_TESTS") == "1",
                    reason="second full build opted out with JV4_SKIP_REBUILD_TESTS=1")
def test_source_date_epoch_build_has_the_same_cpu_features(tmp_path):
    env = dict(os.environ)
    env["SOURCE_DATE_EPOCH"] = "1700000000"
    env.pop("CMAKE_ARGS", None)
    baseline = jv4.build_info()["cpu_baseline"]
    env["JV4_CPU_BASELINE"] = baseline
    wheel_dir = tmp_path / "wheel"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "-w", str(wheel_dir), "-Cbuild-dir=" + str(ROOT / "build" / "sde-test")],
        env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (wheel,) = wheel_dir.glob("jv4-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    code = "import json, jv4; print(json.dumps([jv4.__file__, jv4.build_info()]))"
    # -S: no site hooks, so an editable install's import finder (a dev
    # virtualenv's) cannot shadow the unpacked wheel; numpy & co. come from
    # this environment's site-packages, after it on the path
    import sysconfig

    path = os.pathsep.join([str(site), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": path}, check=True)
    other_file, other = json.loads(out.stdout)
    assert Path(other_file).is_relative_to(site)
    assert other["cpu_features"] == jv4.build_info()["cpu_features"]
    assert "AVX2" in other["cpu_features"] or not sys.platform.startswith("linux") \
        or os.uname().machine != "x86_64" or baseline == "generic"
