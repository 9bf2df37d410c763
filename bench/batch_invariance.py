"""How much a text's vector depends on what shares its decode, and what
batch_invariant=True (one kernel path for every batch size) costs.

    python bench/batch_invariance.py                         # the tiny model: differences
    python bench/batch_invariance.py --cost --shape mini     # + throughput default vs invariant
                                                             #   (short passages, then --long texts)

The tiny test model (random weights) in F32, F16, Q8_0 and Q4_K_M: 60 corpus
texts embedded in one call, each alone, and in reverse order, and with 1 and
2 threads; the largest absolute difference of any value (vectors are unit
length). Then texts of at least 64 tokens (llama.cpp's flash-attention tile)
alone against packed, to show where the difference comes from: the CPU
flash attention takes a tiled path when a ubatch has >= 64 query rows and a
row-by-row path otherwise.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--cost", action="store_true", help="also time default vs batch_invariant on --shape")
    ap.add_argument("--shape", default="mini", choices=["tiny", "mini", "v4"])
    ap.add_argument("--dtypes", default="F16,Q8_0,Q4_K_M")
    ap.add_argument("--texts", type=int, default=64, help="corpus passages a timed call (--cost)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--long", default="512,2048",
                    help="also time texts of exactly these token counts (--cost; '' for none)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="jv4-bench-") as d:
        run(Path(d))
    if a.cost:
        cost(a)


def cost(a) -> None:
    """Corpus throughput and one short query's latency, default kernels vs
    batch_invariant=True, alternating round by round; and the invariant
    mode's largest difference alone vs in 50 random batches (must be 0)."""
    import statistics
    import time

    import jv4

    sys.path.insert(0, str(HERE))
    sys.modules.pop("corpus", None)  # tests/corpus.py, imported by run(): bench/corpus.py here
    from corpus import docstring_passages
    from run import make_model

    texts = docstring_passages(a.texts)
    queries = [p.split(". ")[0][:120] for p in docstring_passages(200)[100:140]]
    print(f"\n{a.shape} shape, {a.texts} corpus passages a call, {len(queries)} queries alone; median of "
          f"{a.rounds} rounds, alternating")
    print("| weights | mode | repack | tok/s | vs default | query alone p50 ms | alone vs batches |")
    print("|---|---|---|---:|---:|---:|---:|")
    rng = np.random.default_rng(3)
    for dtype in a.dtypes.split(","):
        path, _ = make_model(a.shape, dtype)
        models = {"default": jv4.Model(path), "batch_invariant": jv4.Model(path, batch_invariant=True)}
        n_tok = sum(len(models["default"].tokenize(t, role="passage")) for t in texts)
        rates = {k: [] for k in models}
        lat = {k: [] for k in models}
        for k, m in models.items():
            m.embed(texts[:8], role="passage")  # warm
        for _ in range(a.rounds):
            for k, m in models.items():
                t = time.perf_counter()
                m.embed(texts, role="passage")
                rates[k].append(n_tok / (time.perf_counter() - t))
                for q in queries[:10]:
                    t = time.perf_counter()
                    m.embed(q)
                    lat[k].append(time.perf_counter() - t)
        base = statistics.median(rates["default"])
        for k, m in models.items():
            sub = queries[:24]
            alone = np.stack([m.embed(q) for q in sub])
            worst = 0.0
            for _ in range(50):
                idx = rng.choice(len(sub), size=int(rng.integers(2, len(sub))), replace=False)
                worst = max(worst, float(np.abs(m.embed([sub[i] for i in idx]) - alone[idx]).max()))
            r = statistics.median(rates[k])
            print(f"| {dtype} | {k} | {m.info['repack']} | {r:.0f} | {r / base:.2f} | "
                  f"{1000 * statistics.median(lat[k]):.0f} | {worst:.1e} |", flush=True)
        # long texts: attention is where the invariant mode still pays (row by row)
        from corpus import fixed_length

        for length in [int(x) for x in a.long.split(",") if x]:
            n = max(2, 4096 // length)
            longs = fixed_length(lambda t: models["default"].tokenize(t, role="passage"), length, n)
            lrates = {k: [] for k in models}
            for _ in range(a.rounds):
                for k, m in models.items():
                    t = time.perf_counter()
                    m.embed(longs, role="passage")
                    lrates[k].append(length * n / (time.perf_counter() - t))
            lbase = statistics.median(lrates["default"])
            for k, m in models.items():
                r = statistics.median(lrates[k])
                print(f"| {dtype}, {n} texts of {length} tokens | {k} | {m.info['repack']} | {r:.0f} | "
                      f"{r / lbase:.2f} | | |", flush=True)
        for m in models.values():
            m.close()


def run(d: Path) -> None:
    import jv4
    import modelgen as mg
    from corpus import CORPUS

    vocab = mg.Vocab()
    f32 = d / "jina-embeddings-v4-text-retrieval-F32.gguf"
    mg.write_gguf(f32, mg.random_weights(mg.TINY, vocab.size, seed=0), mg.TINY, vocab)
    texts = CORPUS[:60]
    print("| weights | one call vs each alone | vs reversed order | 1 vs 2 threads |")
    print("|---|---:|---:|---:|")
    for dtype in ("F32", "F16", "Q8_0", "Q4_K_M"):
        path = f32 if dtype == "F32" else d / f"m-{dtype}.gguf"
        if dtype != "F32":
            jv4.quantize(f32, path, dtype)
        m1, m2 = jv4.Model(path, n_threads=1), jv4.Model(path, n_threads=2)
        together = m2.embed(texts)
        alone = np.stack([m2.embed(t) for t in texts])
        reverse = m2.embed(texts[::-1])[::-1]
        threads = m1.embed(texts)
        print(f"| {dtype} | {np.abs(together - alone).max():.1e} | {np.abs(together - reverse).max():.1e} "
              f"| {np.abs(together - threads).max():.1e} |")

    m = jv4.Model(f32, n_threads=2)
    longs = [" ".join(CORPUS[i:i + 8]) for i in range(8, 56, 8)]
    n = [len(m.tokenize(t)) for t in longs]
    packed = m.embed(longs + list(texts[:30]))[:len(longs)]
    alone = np.stack([m.embed(t) for t in longs])
    print("\nF32, alone vs packed, by token count:")
    for k, diff in sorted(zip(n, np.abs(packed - alone).max(1))):
        print(f"  {k:4d} tokens: {diff:.1e}")
    short = [len(m.tokenize(t)) for t in texts]
    print(f"(the 60 corpus texts have {min(short)}-{max(short)} tokens, all below the 64-row tile)")


if __name__ == "__main__":
    main()
