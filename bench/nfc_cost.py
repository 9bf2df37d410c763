"""What NFC normalisation costs an embed call (Qwen2-vocabulary models).

    python bench/nfc_cost.py --shape mini --dtype Q4_K_M

Times, in one process: the normal-form step jv4 runs before the engine
(``Model._normalize``) on texts already in NFC (the common case: a quick
check, no copy) and on the same texts decomposed (NFD: each is rebuilt),
against one ``embed`` call on the NFC texts. Texts: docstring passages, plus
the same passages with accented and Hangul words mixed in.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import unicodedata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))


def best_of(fn, n=7):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="mini", choices=("tiny", "mini", "v4"))
    ap.add_argument("--dtype", default="Q4_K_M")
    ap.add_argument("--texts", type=int, default=300)
    a = ap.parse_args()

    import jv4
    from corpus import docstring_passages
    from run import make_model

    path, _ = make_model(a.shape, a.dtype)
    m = jv4.Model(path, n_threads=2)
    ascii_like = docstring_passages(a.texts)
    accented = [t + " — café crème, Ångström, 한국어 텍스트" for t in ascii_like]
    chars = sum(map(len, accented))
    t = time.perf_counter()
    m.embed(accented, role="passage")
    embed_s = time.perf_counter() - t
    print(f"{len(accented)} texts, {chars} characters; one embed call: {embed_s:.3f} s")
    for name, texts in (("docstrings, already NFC", ascii_like), ("accented, already NFC", accented),
                        ("accented, NFD (rebuilt)", [unicodedata.normalize("NFD", s) for s in accented])):
        best, med = best_of(lambda: m._normalize(texts))
        print(f"| {name} | {best * 1e3:.2f} ms | {med * 1e3:.2f} ms | {100 * med / embed_s:.3f} % |")


if __name__ == "__main__":
    main()
