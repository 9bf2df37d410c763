"""tools/sanitize_report.py counts only what comes from jv4, llama.cpp or
ggml: a report with one of their frames fails the run, one wholly in other
code (Python, pydantic_core, a compiler the tests start) does not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.source

ROOT = Path(__file__).resolve().parent.parent

OURS_LEAK = """
==1==ERROR: LeakSanitizer: detected memory leaks

Direct leak of 64 byte(s) in 1 object(s) allocated from:
    #0 0x7f in __interceptor_malloc ../../../../src/libsanitizer/asan/asan_malloc_linux.cpp:69
    #1 0x7f in jv4::Model::embed(...) /work/main/csrc/engine/model.cpp:512
    #2 0x7f  (/venv/lib/python3.11/site-packages/jv4/_core.cpython-311-x86_64-linux-gnu.so+0x1234)

SUMMARY: AddressSanitizer: 64 byte(s) leaked in 1 allocation(s).
"""
OTHER_LEAK = """
==2==ERROR: LeakSanitizer: detected memory leaks

Direct leak of 80 byte(s) in 1 object(s) allocated from:
    #0 0x7f in __interceptor_realloc ../../../../src/libsanitizer/asan/asan_malloc_linux.cpp:85
    #1 0x7f  (/venv/lib/python3.11/site-packages/pydantic_core/_pydantic_core.cpython-311-x86_64-linux-gnu.so+0x1)
    #2 0x7f in PyModule_ExecDef Objects/moduleobject.c:419
"""
UBSAN_OURS = "/work/main/vendor/llama.cpp/ggml/src/ggml.c:100:5: runtime error: signed integer overflow\n"
ASAN_ERROR = "==3==ERROR: AddressSanitizer: heap-buffer-overflow on address 0x1\n    #0 0x7f in f /x/csrc/a.cpp:1\n"


def report(tmp_path: Path, logs: dict) -> subprocess.CompletedProcess:
    for name, text in logs.items():
        (tmp_path / name).write_text(text)
    return subprocess.run([sys.executable, str(ROOT / "tools" / "sanitize_report.py"), str(tmp_path)],
                          capture_output=True, text=True)


def test_reports_from_other_code_do_not_count(tmp_path):
    proc = report(tmp_path, {"asan.2": OTHER_LEAK})
    assert proc.returncode == 0, proc.stdout
    assert "0 leaks with a jv4/llama.cpp/ggml frame; 1 elsewhere" in proc.stdout


def test_a_leak_an_error_or_ub_in_our_code_fails(tmp_path):
    for logs in ({"asan.1": OURS_LEAK}, {"ubsan.1": UBSAN_OURS}, {"asan.3": ASAN_ERROR}):
        for f in tmp_path.iterdir():
            f.unlink()
        proc = report(tmp_path, logs)
        assert proc.returncode == 1, (logs, proc.stdout)
