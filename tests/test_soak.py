"""A shortened soak (tools/soak.py; the long run is 10^5 calls, recorded in
docs/benchmarks.md): several threads embed through one model while SIGINTs
interrupt the main thread's calls; every vector must be bit-identical to a
single-threaded model's for the same call, and the model must keep working."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.long

ROOT = Path(__file__).resolve().parent.parent


def test_short_soak_keeps_every_vector_identical(make_gguf):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "soak.py"), "--calls", "1200", "--threads", "3",
         "--interrupt-every", "0.3", "--max-growth", "0.05", "--model", str(make_gguf())],
        capture_output=True, text=True, timeout=900,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert out["calls"] == 1200 and out["mismatches"] == 0 and not out["errors"], out
    assert out["model_ok_after"] is True
    # the interrupts really happened and really cancelled calls in flight
    assert out["interrupted"] + out["interrupted_between_calls"] > 0, out
