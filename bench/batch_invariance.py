"""How much a text's vector depends on what shares its decode.

    python bench/batch_invariance.py

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
    with tempfile.TemporaryDirectory(prefix="jv4-bench-") as d:
        run(Path(d))


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
