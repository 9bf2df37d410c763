"""The machine's dense matmul rate (torch, bf16 and fp32) on the v4 shape's own
matrices, and what fraction of it a benchmark result reaches.

    python bench/gemm_rate.py                                   # GFLOP/s only
    python bench/gemm_rate.py bench/results/v4-BF16-t2.json ... # + fraction reached

A token costs 2 x (matrix parameters of the layers) FLOP in the projections
(attention scores are extra and not counted, which favours the GEMM side).
The rate is the median over the shapes a v4 layer multiplies: 512 tokens
times q/o (2048 x 2048), k/v (256 x 2048), gate/up (11008 x 2048), down
(2048 x 11008).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import modelgen as mg  # noqa: E402


def flop_per_token(shape: mg.Shape) -> float:
    h, f, kv = shape.hidden, shape.ffn, shape.kv_heads * shape.head_dim
    per_layer = 2 * h * h + 2 * kv * h + 3 * f * h
    return 2.0 * per_layer * shape.layers


def gemm_rate(dtype, threads: int, tokens: int = 512) -> float:
    import torch

    torch.set_num_threads(threads)
    s = mg.V4
    kv = s.kv_heads * s.head_dim
    rates = []
    for out_dim, in_dim in ((s.hidden, s.hidden), (kv, s.hidden), (s.ffn, s.hidden), (s.hidden, s.ffn)):
        x = torch.randn(tokens, in_dim, dtype=dtype)
        w = torch.randn(out_dim, in_dim, dtype=dtype)
        for _ in range(2):
            x @ w.T
        n, t = 5, time.perf_counter()
        for _ in range(n):
            x @ w.T
        rates.append(2.0 * tokens * in_dim * out_dim * n / (time.perf_counter() - t) / 1e9)
    return statistics.median(rates)


def main() -> int:
    import torch

    threads = 2
    files = [Path(p) for p in sys.argv[1:]]
    if files:
        threads = json.loads(files[0].read_text())["threads"]
    bf16 = gemm_rate(torch.bfloat16, threads)
    fp32 = gemm_rate(torch.float32, threads)
    per_tok = flop_per_token(mg.V4)
    print(f"torch GEMM, {threads} threads: bf16 {bf16:.0f} GFLOP/s, fp32 {fp32:.0f} GFLOP/s; "
          f"v4 token = {per_tok / 1e9:.2f} GFLOP")
    for f in files:
        s = json.loads(f.read_text())
        per = flop_per_token(mg.SHAPES[s["shape"]])
        for engine, r in s["results"]["corpus"].items():
            rate = r["tok_s"] * per / 1e9
            print(f"{s['shape']} {s['dtype']:7s} {engine:22s} {r['tok_s']:6.1f} tok/s = "
                  f"{rate:4.0f} GFLOP/s = {rate / bf16:.2f} x bf16 GEMM")
    return 0


if __name__ == "__main__":
    sys.exit(main())
