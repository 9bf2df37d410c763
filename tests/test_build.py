"""The installed module: static linking, version single-sourcing, build_info,
the pinned llama.cpp fetch and its checksum."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import cmake  # the PyPI package (test extra): a CMake binary is always at hand
import pybind11
import pytest

import jv4

ROOT = Path(__file__).resolve().parent.parent
CMAKE = str(Path(cmake.CMAKE_BIN_DIR) / "cmake")


def _pyproject_version() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    return re.search(r'^version = "([^"]+)"', text, re.M).group(1)


def _lock() -> dict:
    out = {}
    for line in (ROOT / "vendor" / "llama.cpp.lock").read_text().splitlines():
        if " = " in line and not line.startswith("#"):
            k, v = line.split(" = ", 1)
            out[k.strip()] = v.strip()
    return out


@pytest.mark.smoke
def test_version_is_single_sourced_from_pyproject():
    want = _pyproject_version()
    assert jv4.__version__ == want
    assert jv4._core.__version__ == want
    assert jv4.build_info()["version"] == want
    assert metadata.version("jv4") == want


@pytest.mark.smoke
def test_build_info_reports_llama_cpp_pin_backends_and_cpu_features():
    info = jv4.build_info()
    lock = _lock()
    assert info["llama_cpp"]["commit"] == lock["llama_cpp_commit"]
    assert info["llama_cpp"]["commit"].startswith("0c1e570")
    assert info["llama_cpp"]["source"] == f"llama-cpp-python=={lock['version']}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", info["llama_cpp"]["version"])
    assert "CPU" in info["backends"]
    assert isinstance(info["cpu_features"], list)
    # cpu_features must agree with llama.cpp's own system_info line
    for feat in info["cpu_features"]:
        assert f"{feat} = 1" in info["system_info"]


def test_default_build_never_compiles_amx():
    # ggml's AMX kernel dies with SIGILL on the build machine: never on by default
    info = jv4.build_info()
    if info["cpu_baseline"] == "native":
        pytest.skip("this build asked for JV4_CPU_BASELINE=native, which includes AMX by design")
    assert "AMX_INT8" not in info["cpu_features"]


def _cpu_flags() -> set:
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def test_bf16_kernel_uses_amx_where_it_can_and_not_when_told():
    # jv4's own BF16 kernel (patch 0005) takes AMX tiles at run time: on Linux,
    # in a build with AVX512-BF16, on a CPU with AMX-TILE and AMX-BF16
    # (docs/usage.md, "jv4.build_info()"); JV4_BF16_AMX=0 keeps it off.
    info = jv4.build_info()
    can = (sys.platform == "linux" and "AVX512_BF16" in info["cpu_features"]
           and {"amx_tile", "amx_bf16"} <= _cpu_flags())
    assert info["bf16_amx"] is can
    code = "import jv4; print(jv4.build_info()['bf16_amx'])"
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "JV4_BF16_AMX": "0"})
    assert off.returncode == 0, off.stderr
    assert off.stdout.strip() == "False"


@pytest.mark.smoke
def test_module_links_no_llama_or_ggml_shared_library():
    if not sys.platform.startswith("linux"):
        pytest.skip(f"needs ldd and ELF modules (Linux); this platform is {sys.platform}")
    so = jv4._core.__file__
    out = subprocess.run(["ldd", so], capture_output=True, text=True, check=True).stdout
    assert "libllama" not in out and "libggml" not in out, out
    pkg_dir = Path(so).parent
    assert not [p.name for p in pkg_dir.iterdir() if re.match(r"lib(llama|ggml)", p.name)]


def test_module_exports_no_ggml_or_llama_symbols():
    # another extension with its own static ggml (llama-cpp-python, whisper
    # bindings) must not bind to jv4's copy, nor jv4 to theirs
    if not sys.platform.startswith("linux"):
        pytest.skip(f"checks ELF dynamic symbols (Linux); this platform is {sys.platform}")
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is needed to list dynamic symbols")
    out = subprocess.run([nm, "-D", "--defined-only", jv4._core.__file__], capture_output=True, text=True,
                         check=True).stdout
    leaked = [line.split()[-1] for line in out.splitlines() if re.search(r" (ggml|gguf|llama)_", line)]
    assert leaked == [], leaked[:20]
    assert any(line.endswith(" PyInit_" + jv4._core.__name__.rsplit(".", 1)[-1]) for line in out.splitlines())


@pytest.mark.source
def test_vendored_llama_cpp_is_not_tracked_by_git():
    if not (ROOT / ".git").exists():
        pytest.skip(f"needs a git checkout to ask git; {ROOT} has no .git (sdist?)")
    out = subprocess.run(["git", "ls-files", "vendor/llama.cpp"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def _fetch_env(archive: Path) -> dict:
    env = dict(os.environ)
    env["JV4_LLAMA_CPP_ARCHIVE"] = str(archive)
    return env


@pytest.fixture()
def tampered_archive(tmp_path) -> Path:
    lock = _lock()
    real = ROOT / "vendor" / lock["archive"]
    bad = tmp_path / lock["archive"]
    if real.is_file():
        data = bytearray(real.read_bytes())
        data[len(data) // 2] ^= 0xFF
        bad.write_bytes(bytes(data))
    else:
        bad.write_bytes(b"not the pinned archive")
    return bad


@pytest.mark.source
def test_fetch_script_rejects_a_tampered_archive(tmp_path, tampered_archive):
    dest = tmp_path / "llama.cpp"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "fetch_llama_cpp.py"), "--dest", str(dest),
         "--archive", str(tampered_archive)],
        capture_output=True, text=True)
    assert proc.returncode != 0
    assert "sha256 checksum mismatch" in proc.stderr
    assert _lock()["sha256"] in proc.stderr
    assert not dest.exists()


@pytest.mark.source
def test_cmake_configure_fails_on_a_tampered_archive_naming_the_checksum(tmp_path, tampered_archive):
    src = tmp_path / "src"
    (src / "vendor").mkdir(parents=True)
    for name in ("CMakeLists.txt", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copy(ROOT / "vendor" / "llama.cpp.lock", src / "vendor")
    shutil.copytree(ROOT / "tools", src / "tools")
    shutil.copytree(ROOT / "patches", src / "patches")
    proc = subprocess.run(
        [CMAKE, "-S", str(src), "-B", str(tmp_path / "build"),
         f"-DPython_EXECUTABLE={sys.executable}"],
        capture_output=True, text=True, env=_fetch_env(tampered_archive))
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "sha256 checksum mismatch" in text
    assert "checksum" in text.split("CMake Error")[-1]


@pytest.mark.source
def test_cuda_switch_reaches_ggml(tmp_path):
    # Proving the CUDA build is a later issue; here the switch must reach ggml.
    if os.environ.get("JV4_SANITIZED") == "1":
        pytest.skip("under tools/sanitize.sh the preloaded sanitizer runtimes break nvcc's compiler check")
    if shutil.which("nvcc") is None:
        pytest.skip("needs nvcc (the CUDA toolkit) on PATH to configure ggml's CUDA backend")
    build = tmp_path / "b"
    proc = subprocess.run([CMAKE, "-S", str(ROOT), "-B", str(build), "-DJV4_CUDA=ON",
                           f"-DPython_EXECUTABLE={sys.executable}",
                           f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                           "-DCMAKE_CUDA_ARCHITECTURES=90"],
                          capture_output=True, text=True)
    cache = (build / "CMakeCache.txt").read_text() if (build / "CMakeCache.txt").exists() else ""
    assert "GGML_CUDA:BOOL=ON" in cache, proc.stdout[-3000:] + proc.stderr[-3000:]
    # ggml's CUDA backend was configured: it either generates, or (on a machine
    # with nvcc but without the CUDA libraries) stops at linking cuBLAS.
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0 or ('"ggml-cuda" links to' in text and "CUDA::cublas" in text), \
        text[-3000:]
