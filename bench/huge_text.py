"""What truncating a huge text costs: tokenizing a head against the whole.

    python bench/huge_text.py [--mb 10] [--max-length 512]

One process, the tiny test model (the forward pass of 512 tokens is the
same for every case, so the difference is tokenization): for each kind of
10 MB text, `embed` with truncation (jv4 tokenizes a head of the text,
csrc/engine/truncation.hpp) against `tokenize` of the whole text (what
embed did before), and a check that the head equals the whole text's first
`max_length` tokens. Kinds: prose, one repeated letter (a single BPE piece),
spaces, CJK without spaces, digits, control characters.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=10.0)
    ap.add_argument("--max-length", type=int, default=512)
    args = ap.parse_args()
    import jv4
    import modelgen as mg
    from corpus import CORPUS

    n = int(args.mb * 1_000_000)
    rng = random.Random(0)
    prose = " ".join(CORPUS) + "\n"
    kinds = {
        "prose (docstrings)": prose,
        "one letter repeated": "a",
        "spaces": " ",
        "CJK, no spaces or punctuation": "日本語の文章",
        "digits": "7",
        "control characters": "".join(chr(rng.randrange(0, 32)) for _ in range(1000)),
    }
    with tempfile.TemporaryDirectory(prefix="jv4-bench-") as d:
        path = Path(d) / "jina-embeddings-v4-text-retrieval-F32.gguf"
        vocab = mg.Vocab()
        mg.write_gguf(path, mg.random_weights(mg.TINY, vocab.size, seed=0), mg.TINY, vocab)
        m = jv4.Model(path, max_length=args.max_length, n_threads=2)
        m.embed("warm up")
        print(f"| text ({args.mb:g} MB, UTF-8) | embed, truncated to {args.max_length} | "
              "tokenize the whole text | ratio | head = whole[:max_length] |")
        print("|---|---:|---:|---:|---|")
        for name, unit in kinds.items():
            text = unit * (n // len(unit.encode()) + 1)
            while len(text.encode()) > n:
                text = text[: len(text) - max(1, (len(text.encode()) - n) // 4)]
            _, t_embed = timed(lambda: m.embed(text))
            whole, t_whole = timed(lambda: m.tokenize(text))
            same = np.array_equal(m.tokenize(text, max_length=args.max_length), whole[: args.max_length])
            print(f"| {name} | {t_embed:.3f} s | {t_whole:.2f} s | {t_whole / t_embed:.0f}x | {same} |",
                  flush=True)


if __name__ == "__main__":
    main()
