"""What the progress bar and the output precisions cost.

In one process, on one model and corpus, rounds alternate between
`embed(show_progress=False)` and `embed(show_progress=True)` (the bar drawn
to a discarded stderr), so that machine drift cancels; the spread of each
variant's own rounds is the noise the difference is compared with. Then
each output precision is timed on one round's float32 result, as a fraction
of that round's embed time.

    python bench/progress_cost.py --shape mini --dtype Q4_K_M --rounds 6
    python bench/progress_cost.py --shape tiny --dtype F32 --rounds 10   # fastest decodes: worst case

Results: bench/results/progress-<shape>-<dtype>.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))  # bench/corpus.py before tests/corpus.py


def tiny_model() -> Path:
    import modelgen as mg

    path = HERE / "models" / "jina-embeddings-v4-text-retrieval-tiny-F32.gguf"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        vocab = mg.Vocab()
        mg.write_gguf(path, mg.random_weights(mg.TINY, vocab.size, seed=0), mg.TINY, vocab,
                      arch="qwen2vl", name="jina-embeddings-v4-text-retrieval", dtype="F32")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=("tiny", "mini", "v4"), default="mini")
    ap.add_argument("--dtype", default="Q4_K_M")
    ap.add_argument("--rounds", type=int, default=6, help="rounds per variant")
    ap.add_argument("--texts", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import jv4
    from corpus import docstring_passages

    if a.shape == "tiny":
        path = tiny_model()
    else:
        from run import make_model

        path, _ = make_model(a.shape, a.dtype)
    texts = docstring_passages(a.texts)
    m = jv4.Model(path, n_threads=a.threads)
    n_tokens = sum(len(m.tokenize(t, role="passage")) for t in texts)
    m.embed(texts[:8], role="passage")  # warm-up

    times: dict = {"off": [], "on": []}
    for r in range(a.rounds):
        for variant in (("off", "on") if r % 2 == 0 else ("on", "off")):
            with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
                t = time.perf_counter()
                floats = m.embed(texts, role="passage", show_progress=variant == "on")
                times[variant].append(time.perf_counter() - t)

    rate = {v: [n_tokens / s for s in ts] for v, ts in times.items()}
    med = {v: statistics.median(rs) for v, rs in rate.items()}
    spread = {v: (max(rs) - min(rs)) / med[v] for v, rs in rate.items()}
    embed_s = statistics.median(times["off"])

    prec = {}
    ranges = jv4.calibration_ranges(floats)
    for p in jv4.PRECISIONS:
        kw = {"ranges": ranges} if p.endswith("int8") else {}
        reps = []
        for _ in range(20):
            t = time.perf_counter()
            jv4.quantize_embeddings(floats, p, **kw)
            reps.append(time.perf_counter() - t)
        prec[p] = statistics.median(reps)

    result = {
        "shape": a.shape, "dtype": a.dtype, "threads": a.threads, "texts": len(texts), "tokens": n_tokens,
        "rounds": a.rounds, "tok_s": rate, "median_tok_s": med, "spread": spread,
        "ratio_on_off": med["on"] / med["off"], "embed_s": embed_s, "precision_s": prec,
        "cpu": _cpu(),
    }
    out = HERE / "results" / f"progress-{a.shape}-{a.dtype}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")

    print(f"{a.shape} {a.dtype}, {len(texts)} texts / {n_tokens} tokens, {a.threads} threads, "
          f"{a.rounds} rounds each, alternating")
    print("| show_progress | median tok/s | spread of its rounds |")
    print("|---|---|---|")
    for v in ("off", "on"):
        print(f"| {v == 'on'} | {med[v]:.1f} | {spread[v] * 100:.1f} % |")
    print(f"on / off = {result['ratio_on_off']:.4f}")
    print()
    print(f"| precision | time for {len(texts)} vectors of {floats.shape[1]} | fraction of embed ({embed_s:.2f} s) |")
    print("|---|---|---|")
    for p, s in prec.items():
        print(f"| {p} | {s * 1e3:.3f} ms | {s / embed_s * 100:.4f} % |")
    print(f"wrote {out}")


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


if __name__ == "__main__":
    main()
