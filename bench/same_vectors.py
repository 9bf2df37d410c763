"""Whether two jv4 builds give the same vectors, bit for bit: texts (single
vectors of every task and role at several formats, long texts over several
decodes, batches), multi-vectors and images, on the test suite's synthetic
models (tests/modelgen.py, tests/ckptgen.py: a jina-v4 checkpoint with its
vision tower, converted by this build's `jv4 convert`). The models are made
once; each build embeds them in its own process.

    python bench/same_vectors.py --baseline-python /path/to/old/venv/bin/python

Prints one line per case and exits 1 if any differs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

CHILD = r"""
import json, sys
import numpy as np
import jv4
spec = json.loads(sys.argv[1])
out = {}
texts = spec["texts"]
for name, path in spec["texts_models"].items():
    m = jv4.Model(path, n_threads=2)
    for role in ("query", "passage"):
        out[f"{name}/{role}"] = m.embed(texts, role=role)
        out[f"{name}/{role}/dim128"] = m.embed(texts, role=role, dim=128)
    out[f"{name}/one-by-one"] = np.stack([m.embed(t) for t in texts])
    m.close()
m = jv4.Model(spec["folder"], n_threads=2, batch_tokens=64)
for task in jv4.TASKS:
    mv = m.embed_multivector(texts, task=task, role="passage")
    out[f"base/{task}/multi"] = mv.data
    out[f"base/{task}/multi-pooled"] = np.asarray(mv.pooled)
    out[f"base/{task}/images"] = m.embed_images(spec["images"], task=task)
    mv = m.embed_images_multivector(spec["images"], task=task)
    out[f"base/{task}/images-multi"] = mv.data
np.savez(spec["out"], **out)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline-python", required=True, help="an interpreter with the other jv4 build")
    a = ap.parse_args()

    import jv4
    import ckptgen as cg
    import modelgen as mg
    from corpus import CORPUS

    tmp = Path(tempfile.mkdtemp(prefix="jv4-same-"))
    vocab = mg.Vocab()
    weights = mg.random_weights(mg.TINY, vocab.size, seed=0)
    f32 = mg.write_gguf(tmp / "jina-embeddings-v4-text-retrieval-F32.gguf", weights, mg.TINY, vocab,
                        arch="qwen2vl", name="jina-embeddings-v4-text-retrieval")
    models = {"F32": str(f32)}
    for q in ("F16", "Q8_0", "Q4_K_M"):
        dst = tmp / f"jina-embeddings-v4-text-retrieval-{q}.gguf"
        jv4.quantize(f32, dst, q)
        models[q] = str(dst)
    ck = cg.write_checkpoint(tmp / "ckpt", vocab)
    jv4.convert(ck.root, tmp / "base", outtype="f32")
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for i, (w, h) in enumerate([(224, 224), (300, 180), (57, 400)]):
        p = tmp / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        images.append(str(p))
    texts = list(CORPUS[:24]) + [" ".join(CORPUS) * 3]  # the last one spans several decodes

    results = {}
    for label, py in (("this", sys.executable), ("baseline", a.baseline_python)):
        spec = {"texts": texts, "texts_models": models, "folder": str(tmp / "base"), "images": images,
                "out": str(tmp / f"{label}.npz")}
        subprocess.run([py, "-c", CHILD, json.dumps(spec)], check=True)
        results[label] = np.load(tmp / f"{label}.npz")
    differ = 0
    for key in results["this"].files:
        x, y = results["this"][key], results["baseline"][key]
        same = x.shape == y.shape and x.tobytes() == y.tobytes()
        differ += not same
        print(f"{'same' if same else 'DIFFERENT':9} {key} {x.shape}"
              + ("" if same else f" max |diff| {np.abs(x.astype(np.float64) - y).max():.3g}"))
    print(f"{len(results['this'].files) - differ} of {len(results['this'].files)} cases the same bytes")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
