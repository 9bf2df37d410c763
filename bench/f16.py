"""F16 held as BF16 (Model(f16_as_bf16=...)) on one shape: an F16 file loaded
with the conversion (the default where the CPU code has AVX512-BF16), the same
file kept F16, and the BF16 file of the same weights; each configuration in
its own process (peak RSS is its own VmHWM), rounds interleaved.

    python bench/f16.py --shape v4 --texts 16 --rounds 2

Models come from bench/run.py's generator (bench/models/, kept).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CONFIGS = {
    "F16 file as BF16 (default)": ("F16", "1"),
    "F16 file kept F16 (f16_as_bf16=False)": ("F16", "0"),
    "BF16 file": ("BF16", "-"),
}


def child(path: str, flag: str, n_texts: int, threads: int) -> dict:
    import jv4
    from corpus import docstring_passages
    from run import _rss_mib

    texts = docstring_passages(n_texts)
    t = time.perf_counter()
    m = jv4.Model(path, n_threads=threads, f16_as_bf16=None if flag == "-" else flag == "1")
    load_s = time.perf_counter() - t
    m.embed(texts[:4], role="passage")  # warm-up
    n_tokens = sum(len(m.tokenize(x, role="passage")) for x in texts)
    t = time.perf_counter()
    vectors = m.embed(texts, role="passage")
    seconds = time.perf_counter() - t
    return {"tok_s": n_tokens / seconds, "load_s": load_s, "peak_mib": _rss_mib(),
            "load_mode": m.info["load_mode"], "f16_as_bf16": m.info["f16_as_bf16"],
            "tokens": n_tokens, "vectors": vectors.tolist()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="v4", choices=("tiny", "mini", "v4"))
    ap.add_argument("--texts", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print("RESULT " + json.dumps(child(a.model, a.child[1], a.texts, a.threads)))
        return 0

    import numpy as np

    from run import make_model

    files = {dtype: make_model(a.shape, dtype)[0] for dtype in ("F16", "BF16")}
    runs: dict = {k: [] for k in CONFIGS}
    for _ in range(a.rounds):
        for name, (dtype, flag) in CONFIGS.items():
            out = subprocess.run([sys.executable, __file__, "--child", name, flag, "--model", str(files[dtype]),
                                  "--texts", str(a.texts), "--threads", str(a.threads)],
                                 capture_output=True, text=True, check=True).stdout
            runs[name].append(json.loads([x for x in out.splitlines() if x.startswith("RESULT ")][-1][7:]))
    import jv4

    feats = jv4.build_info()["cpu_features"]
    print(f"shape {a.shape}, {a.texts} passages ({runs['BF16 file'][0]['tokens']} tokens), {a.threads} threads, "
          f"median of {a.rounds} rounds; ggml CPU features: {' '.join(feats)}\n")
    bf16 = statistics.median(r["tok_s"] for r in runs["BF16 file"])
    print("| configuration | tok/s | vs BF16 file | load s | peak RSS MiB | file MiB | peak - file | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, (dtype, _) in CONFIGS.items():
        r = runs[name]
        tok = statistics.median(x["tok_s"] for x in r)
        peak = max(x["peak_mib"] for x in r)
        size = files[dtype].stat().st_size / 2**20
        print(f"| {name} | {tok:.1f} | {tok / bf16:.3f} | {statistics.median(x['load_s'] for x in r):.1f} | "
              f"{peak:.0f} | {size:.0f} | {peak - size:+.0f} | {r[0]['load_mode']} |")
    conv = np.array(runs["F16 file as BF16 (default)"][0]["vectors"])
    keep = np.array(runs["F16 file kept F16 (f16_as_bf16=False)"][0]["vectors"])
    cos = (conv * keep).sum(1) / (np.linalg.norm(conv, axis=1) * np.linalg.norm(keep, axis=1))
    print(f"\ncosine, F16 as BF16 vs F16 kept: min {cos.min():.6f}, mean {cos.mean():.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
