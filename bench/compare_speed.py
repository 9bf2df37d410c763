"""Two jv4 builds' speed on the same call, with little noise: in each process
the fastest of `--calls` embeds of the same passages, per format; processes
of the two builds alternate `--rounds` times; the fastest of each build is
reported. For a code change that must not cost speed (a ratio near 1.00),
beside bench/formats.py --baseline-python's medians.

    python bench/formats.py --shape mini --formats F16,Q8_0,Q4_K_M   # makes the models
    python bench/compare_speed.py --baseline-python /path/to/old/venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(shape: str, formats: list, texts: int, calls: int, threads: int) -> dict:
    sys.path.insert(0, str(HERE))
    import jv4
    from corpus import docstring_passages

    passages = docstring_passages(texts)
    out = {}
    for f in formats:
        m = jv4.Model(str(HERE / "models" / f"jina-embeddings-v4-text-retrieval-{shape}-{f}.gguf"), n_threads=threads)
        m.embed(passages[:8], role="passage")  # warm-up
        best = float("inf")
        for _ in range(calls):
            t = time.perf_counter()
            m.embed(passages, role="passage")
            best = min(best, time.perf_counter() - t)
        out[f] = best
        m.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline-python", required=True)
    ap.add_argument("--shape", default="mini")
    ap.add_argument("--formats", default="F16,Q8_0,Q4_K_M")
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    formats = a.formats.split(",")
    if a.child:
        print("RESULT " + json.dumps(child(a.shape, formats, a.texts, a.calls, a.threads)))
        return 0
    best = {"this": {}, "baseline": {}}
    for _ in range(a.rounds):
        for label, py in (("this", sys.executable), ("baseline", a.baseline_python)):
            out = subprocess.run([py, __file__, "--child", "--baseline-python", "-", "--shape", a.shape, "--formats",
                                  a.formats, "--texts", str(a.texts), "--calls", str(a.calls), "--threads",
                                  str(a.threads)], capture_output=True, text=True, check=True).stdout
            r = json.loads(out.split("RESULT ", 1)[1])
            print(label, {f: round(s, 4) for f, s in r.items()}, flush=True)
            for f, s in r.items():
                best[label][f] = min(best[label].get(f, s), s)
    print("\n| format | this build, s | baseline, s | x baseline (speed) |\n|---|---:|---:|---:|")
    for f in formats:
        print(f"| {f} | {best['this'][f]:.3f} | {best['baseline'][f]:.3f} | "
              f"{best['baseline'][f] / best['this'][f]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
