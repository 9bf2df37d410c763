"""jv4's weight-repacking choice on one GGUF: throughput and peak RSS with
repack=None (the default, by weight type), True and False, each in its own
process so that every peak (VmHWM) is that configuration's own.

    python bench/load_modes.py bench/models/jina-embeddings-v4-text-retrieval-v4-Q4_K_M.gguf --texts 24
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def child(path: str, repack: str, n_texts: int, threads: int) -> dict:
    import jv4
    from corpus import docstring_passages
    from run import _rss_mib as _hwm_mib  # this process's own VmHWM

    texts = docstring_passages(n_texts)
    t = time.perf_counter()
    m = jv4.Model(path, n_threads=threads, repack=None if repack == "None" else repack == "True")
    load_s = time.perf_counter() - t
    after_load = _hwm_mib()
    m.embed(texts[:4], role="passage")
    n_tokens = sum(len(m.tokenize(x, role="passage")) for x in texts)
    t = time.perf_counter()
    m.embed(texts, role="passage")
    seconds = time.perf_counter() - t
    return {"repack": repack, "chosen": m.info["repack"], "load_mode": m.info["load_mode"],
            "load_s": round(load_s, 1), "tok_s": round(n_tokens / seconds, 1),
            "peak_after_load_mib": round(after_load), "peak_mib": round(_hwm_mib())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--texts", type=int, default=24)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.model, a.child, a.texts, a.threads)))
        return 0
    size = Path(a.model).stat().st_size / 2**20
    print(f"{Path(a.model).name}: file {size:.0f} MiB, {a.texts} texts, {a.threads} threads")
    print("| repack= | chosen | load | load s | tok/s | peak after load MiB | peak MiB | peak - file |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for repack in ("None", "True", "False"):
        out = subprocess.run([sys.executable, __file__, a.model, "--texts", str(a.texts),
                              "--threads", str(a.threads), "--child", repack],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"| {repack} | {r['chosen']} | {r['load_mode']} | {r['load_s']} | {r['tok_s']} | "
              f"{r['peak_after_load_mib']} | {r['peak_mib']} | {r['peak_mib'] - size:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
