#!/usr/bin/env python3
"""Writes python/jv4/_core.pyi, the type stub of the compiled module, from
the module itself with pybind11-stubgen (the version pinned in the `test`
extra), so that the stub cannot drift from the bindings.

    python tools/stubgen.py           # regenerate after changing csrc/bindings/
    python tools/stubgen.py --check   # exit 1 with a diff when the stub is stale

tests/test_stub.py runs the check. Needs jv4 built and importable as a
source build (one `_core`; a per-level wheel names its modules otherwise).
"""

from __future__ import annotations

import argparse
import difflib
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUB = ROOT / "python" / "jv4" / "_core.pyi"
HEADER = ("# Generated from the compiled module by tools/stubgen.py (pybind11-stubgen); do not edit.\n"
          "# tests/test_stub.py fails when it differs from what the bindings say.\n")


def generate() -> str:
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([sys.executable, "-m", "pybind11_stubgen", "jv4._core", "--exit-code", "-o", out],
                              capture_output=True, text=True, cwd=out)
        if proc.returncode != 0:
            raise SystemExit(f"pybind11-stubgen failed:\n{proc.stdout}{proc.stderr}")
        return HEADER + (Path(out) / "jv4" / "_core.pyi").read_text(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    text = generate()
    if args.check:
        have = STUB.read_text(encoding="utf-8") if STUB.exists() else ""
        if have != text:
            sys.stdout.writelines(difflib.unified_diff(have.splitlines(keepends=True), text.splitlines(keepends=True),
                                                       str(STUB.relative_to(ROOT)), "generated"))
            print("\nthe stub is stale: run python tools/stubgen.py", file=sys.stderr)
            return 1
        return 0
    STUB.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
