"""One base + three task adapters against three merged models, on a synthetic
jina-embeddings-v4 checkpoint of a chosen shape (default: the real v4 text
shape, rank-32 adapters on every linear and the projector, BF16 like the real
checkpoint):

1. conversion: `jv4 convert` to base + adapters and `--merge` per task, with
   each conversion's peak RSS (it streams tensors);
2. memory: peak RSS of one process serving all three tasks from base +
   adapters, and of one process holding the three merged models, each
   embedding with every task;
3. throughput, side by side in one process: the merged model, base + adapter
   (one task), base + adapter switching task every call, and multi-vector
   output (the same forward pass plus the projector).

    python bench/lora.py --shape v4 --outtype q8_0 --texts 16 --work /var/tmp/jv4-lora

The work folder (checkpoint and GGUFs, ~20 GB for v4) is removed at the end
unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent / "tests"))

TASKS = ("retrieval", "text-matching", "code")
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def hwm_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_child(cmd: list) -> dict:
    """Run cmd (this script as a child); the JSON it prints last. Each child
    reports its own peak RSS from /proc (VmHWM is the exec'd process's own;
    wait4's ru_maxrss would carry this parent's peak over the exec)."""
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# --- a streaming synthetic checkpoint -------------------------------------------
def write_checkpoint(root: Path, shape, vocab, rank: int, seed: int = 0) -> None:
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True)
    (root / "adapters").mkdir()
    rng = np.random.default_rng(seed)
    h, f, hd = shape.hidden, shape.ffn, shape.head_dim
    kv = shape.kv_heads * hd
    n_vocab = 151936 if shape.hidden == 2048 else vocab.size + 8

    def bf16(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(torch.bfloat16)

    def mat(o, i):
        return bf16(rng.standard_normal((o, i), dtype=np.float32) / np.sqrt(i))

    def vec(n, scale=0.02, base=0.0):
        return bf16(base + scale * rng.standard_normal(n, dtype=np.float32))

    p = "model.language_model."
    save_file({p + "embed_tokens.weight": bf16(0.5 * rng.standard_normal((n_vocab, h), dtype=np.float32)),
               p + "norm.weight": vec(h, 0.1, 1.0),
               "multi_vector_projector.weight": mat(128, h), "multi_vector_projector.bias": vec(128, 0.1)},
              str(root / "model-embed.safetensors"))
    for i in range(shape.layers):
        q = f"{p}layers.{i}."
        save_file({
            q + "input_layernorm.weight": vec(h, 0.1, 1.0), q + "post_attention_layernorm.weight": vec(h, 0.1, 1.0),
            q + "self_attn.q_proj.weight": mat(h, h), q + "self_attn.q_proj.bias": vec(h, 0.1),
            q + "self_attn.k_proj.weight": mat(kv, h), q + "self_attn.k_proj.bias": vec(kv, 0.1),
            q + "self_attn.v_proj.weight": mat(kv, h), q + "self_attn.v_proj.bias": vec(kv, 0.1),
            q + "self_attn.o_proj.weight": mat(h, h),
            q + "mlp.gate_proj.weight": mat(f, h), q + "mlp.up_proj.weight": mat(f, h),
            q + "mlp.down_proj.weight": mat(h, f),
        }, str(root / f"model-layer{i:03d}.safetensors"))
    dims = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
            "self_attn.o_proj": (h, h), "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h), "mlp.down_proj": (h, f)}
    ad = {}
    for task in TASKS:
        slots = [(f"base_model.model.{p}layers.{i}.{m}", dims[m]) for i in range(shape.layers) for m in LINEARS]
        slots.append(("base_model.model.multi_vector_projector", (128, h)))
        for stem, (o, i_) in slots:
            ad[f"{stem}.lora_A.{task}.weight"] = bf16(rng.standard_normal((rank, i_), dtype=np.float32) / np.sqrt(i_))
            ad[f"{stem}.lora_B.{task}.weight"] = bf16(0.3 * rng.standard_normal((o, rank), dtype=np.float32) / np.sqrt(rank))
    save_file(ad, str(root / "adapters" / "adapter_model.safetensors"))
    (root / "adapters" / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": rank}))
    cfg = {"model_type": "qwen2_5_vl", "vocab_size": n_vocab, "text_config": {
        "hidden_size": h, "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads, "intermediate_size": f, "vocab_size": n_vocab,
        "max_position_embeddings": 128000, "rms_norm_eps": shape.eps, "rope_theta": shape.rope_theta,
        "rope_scaling": {"type": "mrope", "mrope_section": sections(shape)}}}
    (root / "config.json").write_text(json.dumps(cfg))
    vocab.reference_tokenizer().save(str(root / "tokenizer.json"))


def sections(shape) -> list:
    """jina-v4's M-RoPE proportions [16, 24, 24] of the head's rotary pairs."""
    half = shape.head_dim // 2
    a = half * 16 // 64
    b = (half - a) // 2
    return [a, b, half - a - b]


# --- child processes ---------------------------------------------------------------
def child_convert(ckpt: str, out: str, outtype: str, merge: str) -> dict:
    import jv4

    t = time.perf_counter()
    jv4.convert(ckpt, out, outtype=outtype, merge=None if merge == "-" else merge)
    return {"seconds": round(time.perf_counter() - t, 1), "peak_mib": round(hwm_mib())}


def child_memory(kind: str, work: str, n_texts: int, threads: int) -> dict:
    import jv4
    from corpus import docstring_passages

    texts = docstring_passages(min(n_texts, 4))  # enough to reach the working set
    if kind == "adapters":
        m = jv4.Model(Path(work) / "base", n_threads=threads)
        for task in TASKS:
            m.embed(texts, task=task, role="passage")
            m.embed_multivector(texts, task=task, role="passage")
    else:
        models = []
        for task in TASKS:
            folder = Path(work) / f"merged-{task}"
            manifest = json.loads((folder / "jv4.json").read_text())
            models.append(jv4.Model(folder / manifest["merged"], n_threads=threads))
        for m in models:
            m.embed(texts, role="passage")
    return {"peak_mib": round(hwm_mib())}


def child_speed(work: str, n_texts: int, threads: int, rounds: int) -> dict:
    import jv4
    from corpus import docstring_passages

    texts = docstring_passages(n_texts)
    base = jv4.Model(Path(work) / "base", n_threads=threads)
    folder = Path(work) / "merged-retrieval"
    merged = jv4.Model(folder / json.loads((folder / "jv4.json").read_text())["merged"], n_threads=threads)
    tokens = sum(len(base.tokenize(t, task="retrieval", role="passage")) for t in texts)
    thirds = [texts[i::3] for i in range(3)]
    runs = {
        "merged model (retrieval)": lambda: merged.embed(texts, role="passage"),
        "base + adapter (retrieval)": lambda: base.embed(texts, task="retrieval", role="passage"),
        "base + adapter, task switched every call": lambda: [base.embed(thirds[i], task=TASKS[i], role="passage")
                                                            for i in range(3)],
        "base + adapter, multi-vector (retrieval)": lambda: base.embed_multivector(texts, task="retrieval",
                                                                                  role="passage"),
    }
    for fn in runs.values():  # warm-up
        fn()
    times: dict = {k: [] for k in runs}
    for _ in range(rounds):  # interleaved, so that drifts hit every configuration alike
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {"tokens": tokens, "tok_s": {k: round(tokens / statistics.median(v), 2) for k, v in times.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="v4", choices=("tiny", "mini", "v4"))
    ap.add_argument("--outtype", default="q8_0")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--texts", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--work", default="/var/tmp/jv4-lora")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        kind, *rest = a.child
        if kind == "convert":
            r = child_convert(*rest)
        elif kind == "memory":
            r = child_memory(rest[0], a.work, a.texts, a.threads)
        else:
            r = child_speed(a.work, a.texts, a.threads, a.rounds)
        print(json.dumps(r))
        return 0

    import modelgen as mg

    work = Path(a.work)
    if work.exists():
        raise SystemExit(f"{work} exists; remove it or choose another --work")
    shape = mg.SHAPES[a.shape]
    me = [sys.executable, __file__, "--work", str(work), "--texts", str(a.texts), "--threads", str(a.threads),
          "--rounds", str(a.rounds)]
    try:
        t = time.perf_counter()
        write_checkpoint(work / "ckpt", shape, mg.Vocab(), a.rank)
        ck_bytes = sum(p.stat().st_size for p in (work / "ckpt").rglob("*.safetensors"))
        print(f"shape {a.shape}, rank {a.rank}, checkpoint {ck_bytes / 2**30:.2f} GiB BF16 "
              f"(written in {time.perf_counter() - t:.0f} s); outtype {a.outtype}; {a.threads} threads")
        print("\n| conversion | seconds | peak RSS MiB | output GiB |\n|---|---:|---:|---:|")
        for merge in ("-", *TASKS):
            out = work / ("base" if merge == "-" else f"merged-{merge}")
            r = run_child(me + ["--child", "convert", str(work / "ckpt"), str(out), a.outtype, merge])
            size = sum(p.stat().st_size for p in out.iterdir()) / 2**30
            label = "base + 3 adapters + projector" if merge == "-" else f"--merge {merge}"
            print(f"| {label} | {r['seconds']} | {r['peak_mib']} | {size:.2f} |")
        shutil.rmtree(work / "ckpt")
        base_files = json.loads((work / "base" / "jv4.json").read_text())
        base_mib = (work / "base" / base_files["base"]).stat().st_size / 2**20
        adapters_mib = sum((work / "base" / f).stat().st_size for f in base_files["adapters"].values()) / 2**20
        proj_mib = (work / "base" / base_files["projector"]).stat().st_size / 2**20
        merged_mib = sum((work / f"merged-{t}" / json.loads((work / f"merged-{t}" / "jv4.json").read_text())
                          ["merged"]).stat().st_size for t in TASKS) / 2**20
        print(f"\nfiles: base {base_mib:.0f} MiB, 3 adapters {adapters_mib:.0f} MiB, projectors {proj_mib:.1f} MiB; "
              f"3 merged models {merged_mib:.0f} MiB")
        print("\n| one process serving the 3 tasks | peak RSS MiB | files MiB | peak - files MiB |\n|---|---:|---:|---:|")
        for kind, files in (("adapters", base_mib + adapters_mib + proj_mib), ("merged", merged_mib)):
            peak = run_child(me + ["--child", "memory", kind])["peak_mib"]
            label = "base + 3 adapters (+ projectors)" if kind == "adapters" else "3 merged models"
            print(f"| {label} | {peak} | {files:.0f} | {peak - files:+.0f} |")
        s = run_child(me + ["--child", "speed"])
        ref = s["tok_s"]["merged model (retrieval)"]
        print(f"\n{a.texts} passages, {s['tokens']} tokens a call, median of {a.rounds} interleaved rounds\n")
        print("| configuration | tok/s | vs merged |\n|---|---:|---:|")
        for k, v in s["tok_s"].items():
            print(f"| {k} | {v} | {v / ref:.3f} |")
        single = s["tok_s"]["base + adapter (retrieval)"]
        mv = s["tok_s"]["base + adapter, multi-vector (retrieval)"]
        print(f"\nmulti-vector cost over the single vector: {(single / mv - 1) * 100:+.1f} % time")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
