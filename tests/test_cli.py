"""`python -m jv4`: the command-line main job."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

import jv4
from conftest import cosines
from corpus import CORPUS


def test_cli_embeds_a_file_of_lines_into_npy(make_gguf, tmp_path):
    model = make_gguf()
    lines = [t for t in CORPUS if t and "\n" not in t and "\r" not in t][:40]
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "vectors.npy"
    proc = subprocess.run([sys.executable, "-m", "jv4", "embed", str(model), "-i", str(src), "-o",
                           str(out), "--role", "passage", "--dim", "128", "--chunk", "7"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = np.load(out)
    want = jv4.Model(model).embed(lines, role="passage", dim=128)
    assert got.shape == (len(lines), 128) and got.dtype == np.float32
    # chunks of 7 batch differently from one call: equal up to batch invariance
    assert cosines(got, want).min() >= 0.99999


def test_cli_reports_bad_arguments_without_a_traceback(make_gguf, tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("x\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "jv4", "embed", str(make_gguf()), "-i", str(src),
                           "-o", str(tmp_path / "o.npy"), "--dim", "100"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "dim must be one of 128, 256" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_info_prints_build_info_json():
    proc = subprocess.run([sys.executable, "-m", "jv4", "info"], capture_output=True, text=True,
                          check=True)
    assert json.loads(proc.stdout)["version"] == jv4.__version__
