"""Packaging: the wheel workflow and cibuildwheel settings are valid, and the
sdist carries the pruned, patched llama.cpp it needs to build offline.

(The full checks - building the per-level wheel, repairing it with
auditwheel, installing it and the sdist with no compiler or no network and
running their tiers of this suite - are .ci/wheel and .ci/sdist-offline;
.ci/README.md.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "wheels.yml"


def _tool(name: str) -> str:
    # both come with the test extra (and cibuildwheel's test-requires): a
    # missing one is a broken test environment, not a reason to skip
    exe = shutil.which(name) or str(Path(sys.executable).parent / name)
    assert Path(exe).exists(), f"{name} is missing: install the test extra (pip install '.[test]')"
    return exe


def _needs_source_tree():
    if not (ROOT / "pyproject.toml").exists() or not WORKFLOW.exists():
        pytest.skip(f"needs the source tree (pyproject.toml, .github/); {ROOT} has none")


@pytest.mark.source
def test_wheel_workflow_is_valid_for_github_actions():
    _needs_source_tree()
    exe = _tool("check-jsonschema")
    proc = subprocess.run([exe, "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.source
def test_cibuildwheel_builds_cpython_310_to_313_on_every_platform():
    _needs_source_tree()
    exe = _tool("cibuildwheel")

    def ids(platform, archs):
        proc = subprocess.run([exe, "--print-build-identifiers", "--platform", platform, "--archs", archs],
                              cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return set(proc.stdout.split())

    pys = ("cp310", "cp311", "cp312", "cp313")
    assert ids("linux", "x86_64,aarch64") == {f"{p}-manylinux_{a}" for p in pys for a in ("x86_64", "aarch64")}
    assert ids("windows", "AMD64") == {f"{p}-win_amd64" for p in pys}
    mac = ids("macos", "x86_64,arm64")
    assert {f"{p}-macosx_arm64" for p in pys[1:]} <= mac and {f"{p}-macosx_x86_64" for p in pys[2:]} <= mac


def _sdist(tmp_path: Path) -> Path:
    """The sdist named by JV4_SDIST (.ci/sdist-offline: the one CI installs),
    or one built from this checkout."""
    if os.environ.get("JV4_SDIST"):
        return Path(os.environ["JV4_SDIST"])
    _needs_source_tree()
    if not (ROOT / "vendor" / "llama.cpp" / ".jv4-fetched").exists():
        pytest.skip("vendor/llama.cpp has not been fetched (python tools/fetch_llama_cpp.py)")
    proc = subprocess.run([sys.executable, "-c", "import sys; from scikit_build_core.build import build_sdist; "
                           "print(build_sdist(sys.argv[1]))", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return tmp_path / proc.stdout.split()[-1]


@pytest.mark.source
def test_sdist_carries_the_pruned_llama_cpp_and_its_licences(tmp_path):
    sdist = _sdist(tmp_path)
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for needed in ("vendor/llama.cpp/.jv4-fetched", "vendor/llama.cpp/CMakeLists.txt", "vendor/llama.cpp/LICENSE",
                   "vendor/llama.cpp/src/llama.cpp", "vendor/llama.cpp/ggml/src/ggml.c",
                   "vendor/llama.cpp/include/llama.h", "vendor/llama.cpp/models/ggml-vocab-qwen2.gguf",
                   "vendor/llama.cpp.lock", "CMakeLists.txt", "csrc/engine/model.cpp", "tests/conftest.py",
                   # image input: llama.cpp's multimodal library
                   "vendor/llama.cpp/tools/mtmd/CMakeLists.txt", "vendor/llama.cpp/tools/mtmd/clip.cpp",
                   "vendor/llama.cpp/tools/mtmd/models/qwen2vl.cpp", "vendor/llama.cpp/tools/mtmd/debug/mtmd-debug.h"):
        assert needed in names, needed
    assert any(n.startswith("vendor/llama.cpp/licenses/") for n in names)
    for dropped in ("vendor/llama.cpp/tools/server/", "vendor/llama.cpp/tools/ui/", "vendor/llama.cpp/tools/mtmd/test-",
                    "vendor/llama.cpp/tools/mtmd/tests/", "vendor/llama.cpp/common/", "build/", ".git/",
                    "bench/models/"):
        assert not any(n.startswith(dropped) for n in names), dropped
    assert not any(n.endswith(".tar.gz") for n in names)
    # the patched tree, not the archive's: jv4's lm_head patch is in it
    with tarfile.open(sdist) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith("/vendor/llama.cpp/src/models/qwen2.cpp"))
        assert "jv4 patch" in tf.extractfile(member).read().decode()
        member = next(m for m in tf.getmembers() if m.name.endswith("/vendor/llama.cpp/tools/mtmd/clip.cpp"))
        assert "jv4 patch 0010" in tf.extractfile(member).read().decode()


def test_integrations_are_extras_the_base_install_does_not_pull_in():
    from importlib.metadata import requires

    reqs = requires("jv4") or []
    base = [r for r in reqs if "extra ==" not in r]
    names = " ".join(base).lower()
    assert "ray" not in names and "langchain" not in names and "pyarrow" not in names, base
    assert not any(n in names for n in ("starlette", "uvicorn", "prometheus")), base
    assert any(r.startswith("ray[data]") and 'extra == "ray"' in r for r in reqs), reqs
    assert any(r.startswith("langchain-core") and 'extra == "langchain"' in r for r in reqs), reqs
    for name in ("starlette", "uvicorn", "prometheus-client"):
        assert any(r.startswith(name) and 'extra == "serve"' in r for r in reqs), reqs
    # and importing jv4 imports neither
    proc = subprocess.run([sys.executable, "-c", "import sys, jv4; print(sorted(m for m in sys.modules "
                           "if m.split('.')[0] in ('ray', 'langchain_core', 'pyarrow', 'torch', "
                           "'starlette', 'uvicorn')))"],
                          capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
