"""Throughput of each CPU level of a per-level (wheel) install against the
`host` source build, same model, same corpus, rounds alternating.

    bash .ci/wheel    # makes build/wheel-check/venv with the per-level wheel installed
    python bench/levels.py --wheel-python build/wheel-check/venv/bin/python --dtype BF16
    python bench/levels.py --wheel-python build/wheel-check/venv/bin/python --dtype Q4_K_M

The host column is this interpreter's jv4 (a source build, JV4_CPU_BASELINE
host); each level runs in the wheel's interpreter with JV4_CPU set. Every
measurement is its own child process. Results: bench/results/levels-<shape>-<dtype>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

CHILD = r"""
import json, sys, time
import jv4
path, threads, texts = sys.argv[1], int(sys.argv[2]), json.loads(sys.stdin.read())
m = jv4.Model(path, n_threads=threads)
n_tok = sum(len(m.tokenize(t, role="passage")) for t in texts)
m.embed(texts[:8], role="passage")
t = time.perf_counter()
m.embed(texts, role="passage")
dt = time.perf_counter() - t
d = jv4.build_info()["dispatch"]
print(json.dumps({"tok_s": n_tok / dt, "loaded": d["loaded"], "features": jv4.build_info()["cpu_features"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel-python", required=True, type=Path)
    ap.add_argument("--shape", default="mini", choices=("mini", "v4"))
    ap.add_argument("--dtype", default="BF16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--texts", type=int, default=120)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    from corpus import docstring_passages
    from run import make_model

    path, _ = make_model(a.shape, a.dtype)
    texts = json.dumps(docstring_passages(a.texts))
    runs = {"host": (sys.executable, {})}
    for level in ("avx512", "x86-64-v3", "x86-64-v2"):
        runs[level] = (os.path.abspath(a.wheel_python), {"JV4_CPU": level})
    rates: dict = {k: [] for k in runs}
    seen: dict = {}
    for r in range(a.rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            exe, env = runs[name]
            proc = subprocess.run([exe, "-c", CHILD, str(path), str(a.threads)], input=texts, text=True,
                                  capture_output=True, env=dict(os.environ, **env), cwd="/")
            if proc.returncode != 0:
                raise SystemExit(f"{name}: {proc.stderr}")
            out = json.loads(proc.stdout)
            rates[name].append(out["tok_s"])
            seen[name] = out["loaded"]
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {"shape": a.shape, "dtype": a.dtype, "threads": a.threads, "rounds": a.rounds,
              "tok_s": rates, "median_tok_s": med, "ratio_to_host": {k: med[k] / med["host"] for k in med},
              "loaded": seen}
    out = HERE / "results" / f"levels-{a.shape}-{a.dtype}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{a.shape} {a.dtype}, {a.texts} texts, {a.threads} threads, {a.rounds} alternating rounds")
    print("| build | module | median tok/s | × host |")
    print("|---|---|---|---|")
    for k in runs:
        print(f"| {k} | {seen[k]} | {med[k]:.1f} | {med[k] / med['host']:.3f} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
