"""One entry point for jv4's throughput benchmark.

In one run, on the same GGUF, corpus and thread count, it measures:
  jv4                 Model.embed over the whole corpus (role="passage")
  raw forward         llama-bench pp128 / pp512 built from the vendored tree (the ceiling)
  llama-server        /v1/embeddings on loopback, 32 texts a request; built from the
                      vendored tree (jv4's lm_head patch included) and, as
                      llama-server-upstream, from the same commit unpatched
  llama-cpp-python    Llama(embedding=True).embed, 32 texts a call
  transformers        Qwen2Model fp32 and bf16, length-sorted batches of 32
Every engine runs in its own child process (so peak RSS is its own) and the
engines alternate round by round so that machine drift cancels.

    python bench/run.py --shape mini --dtype F16 --rounds 2
    python bench/run.py --engines jv4,raw --sweep

Models are generated (random weights, real Qwen2 tokenizer) under bench/models/;
results go to bench/results/<name>.json and are printed as a table.
Optional engines are skipped with a note when their tool is missing: build
llama-bench/llama-server with bench/build_tools.py (--upstream too), install
llama-cpp-python==0.3.36 for that column.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

TOOLS = ROOT / "build" / "llama-tools" / "bin"                 # jv4's patched tree
UPSTREAM_TOOLS = ROOT / "build" / "llama-tools-upstream" / "bin"  # as released
PREFIX = "Passage: "
CLIENT_BATCH = 32


# ------------------------------------------------------------------ models
def make_model(shape_name: str, dtype: str) -> tuple[Path, Path]:
    """(gguf path, npz of HF weights); generated once and kept."""
    import numpy as np

    import modelgen as mg

    shape = mg.SHAPES[shape_name]
    mdir = HERE / "models"
    mdir.mkdir(exist_ok=True)
    base = mdir / f"jina-embeddings-v4-text-retrieval-{shape_name}"
    npz = base.with_name(base.name + "-weights.npz")
    f16 = base.with_name(base.name + "-F16.gguf")
    out = base.with_name(base.name + f"-{dtype}.gguf")
    if not f16.exists():
        vocab = mg.Vocab()
        # float16: exactly the values the F16 GGUF holds (and half the memory)
        w = mg.random_weights(shape, vocab.size, seed=1, dtype=np.float16)
        np.savez(npz, **w)
        mg.write_gguf(f16, w, shape, vocab, arch="qwen2vl",
                      name="jina-embeddings-v4-text-retrieval", dtype="F16")
    if not out.exists():
        import jv4

        jv4.quantize(f16, out, dtype)
    return out, npz


# ------------------------------------------------------------------ children
def _rss_mib() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child
    # would report its parent's peak (here: quantizing or loading the model).
    return _proc_hwm_mib(os.getpid())


def child_jv4(a, texts):
    import jv4

    m = jv4.Model(a.model, n_threads=a.threads, batch_tokens=a.batch_tokens or None)
    m.embed(texts[:8], role="passage")  # warm-up
    t = time.perf_counter()
    m.embed(texts, role="passage")
    return time.perf_counter() - t, _rss_mib()


def child_llama_cpp_python(a, texts):
    from llama_cpp import Llama

    llm = Llama(model_path=a.model, embedding=True, n_ctx=8192, n_batch=8192, n_ubatch=8192,
                n_threads=a.threads, n_threads_batch=a.threads, pooling_type=1, verbose=False)
    llm.embed([PREFIX + t for t in texts[:8]])
    t = time.perf_counter()
    for i in range(0, len(texts), CLIENT_BATCH):
        llm.embed([PREFIX + x for x in texts[i:i + CLIENT_BATCH]])
    return time.perf_counter() - t, _rss_mib()


def reference_setup(npz, shape: str, threads: int, dtype: str):
    """(transformers Qwen2Model holding the npz weights in dtype, the reference
    tokenizer), torch limited to `threads`."""
    import numpy as np
    import torch

    import modelgen as mg

    torch.set_num_threads(threads)
    w = dict(np.load(npz))
    vocab = mg.Vocab()
    model = mg.reference_model(w, mg.SHAPES[shape], vocab.size, dtype=dtype)
    del w
    return model, vocab.reference_tokenizer()


def child_transformers(a, texts, dtype):
    import numpy as np
    import torch

    import modelgen as mg

    torch.set_num_threads(a.threads)
    shape = mg.SHAPES[a.shape]
    w = dict(np.load(a.npz))
    vocab = mg.Vocab()
    model = mg.reference_model(w, shape, vocab.size,
                               dtype="bfloat16" if dtype == "bf16" else "float32")
    del w
    tok = vocab.reference_tokenizer()
    ids = [tok.encode(PREFIX + x, add_special_tokens=False).ids for x in texts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))

    def run(sel):
        with torch.inference_mode():
            for s in range(0, len(sel), CLIENT_BATCH):
                batch = [ids[i] for i in sel[s:s + CLIENT_BATCH]]
                n = max(len(b) for b in batch)
                x = torch.zeros((len(batch), n), dtype=torch.long)
                mask = torch.zeros((len(batch), n), dtype=torch.long)
                for j, b in enumerate(batch):
                    x[j, :len(b)] = torch.tensor(b)
                    mask[j, :len(b)] = 1
                hs = model(input_ids=x, attention_mask=mask).last_hidden_state.float()
                m = mask.unsqueeze(-1).float()
                v = (hs * m).sum(1) / m.sum(1)
                torch.nn.functional.normalize(v, dim=-1)

    run(order[:8])
    t = time.perf_counter()
    run(order)
    return time.perf_counter() - t, _rss_mib()


def _proc_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def child_llama_server(a, texts, exe=TOOLS / "llama-server"):
    port = 18000 + os.getpid() % 1000
    proc = subprocess.Popen(
        [str(exe), "-m", a.model, "--embeddings", "--pooling", "mean", "-t", str(a.threads),
         "-tb", str(a.threads), "-c", "8192", "-b", "8192", "-ub", "8192", "-np", "1",
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("llama-server did not come up")

        def post(batch):
            body = json.dumps({"input": [PREFIX + x for x in batch]}).encode()
            req = urllib.request.Request(url + "/v1/embeddings", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=600) as r:
                data = json.loads(r.read())
            assert len(data["data"]) == len(batch)

        post(texts[:8])
        t = time.perf_counter()
        for i in range(0, len(texts), CLIENT_BATCH):
            post(texts[i:i + CLIENT_BATCH])
        return time.perf_counter() - t, _proc_hwm_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


CHILDREN = {
    "jv4": child_jv4,
    "llama-server": child_llama_server,
    "llama-server-upstream": lambda a, t: child_llama_server(a, t, UPSTREAM_TOOLS / "llama-server"),
    "llama-cpp-python": child_llama_cpp_python,
    "transformers-fp32": lambda a, t: child_transformers(a, t, "fp32"),
    "transformers-bf16": lambda a, t: child_transformers(a, t, "bf16"),
}


def child_main(a) -> None:
    texts = json.loads(Path(a.texts).read_text(encoding="utf-8"))
    seconds, rss = CHILDREN[a.child](a, texts)
    print("RESULT " + json.dumps({"seconds": seconds, "peak_rss_mib": rss}))


# ------------------------------------------------------------------ parent
def llama_bench(exe: Path, model: Path, threads: int, prompts=(128, 512), extra=()) -> dict:
    """{"pp<n>": tokens/s} from llama-bench (prompt processing only, 3 reps)."""
    out = subprocess.run([str(exe), "-m", str(model), "-t", str(threads),
                          "-p", ",".join(map(str, prompts)), "-n", "0", "-r", "3", "-o", "json",
                          *extra], capture_output=True, text=True, check=True).stdout
    return {f"pp{row['n_prompt']}": row["avg_ts"] for row in json.loads(out)}


def raw_forward(model: Path, threads: int, repack: bool) -> dict:
    # the ceiling of jv4's own build: same tree, same flags, same repack choice
    return llama_bench(TOOLS / "llama-bench", model, threads, extra=("--repack", str(int(repack))))


def available(engine: str) -> str | None:
    """None if the engine can run here, else why not."""
    if engine == "llama-server" and not (TOOLS / "llama-server").exists():
        return "llama-server not built (bench/build_tools.py)"
    if engine == "raw" and not (TOOLS / "llama-bench").exists():
        return "llama-bench not built (bench/build_tools.py)"
    if engine == "llama-cpp-python":
        try:
            import importlib.util

            if importlib.util.find_spec("llama_cpp") is None:
                return "llama-cpp-python not installed"
        except Exception:  # noqa: BLE001
            return "llama-cpp-python not importable"
    return None


def run_child(engine, a, model, npz, texts_file) -> dict:
    cmd = [sys.executable, __file__, "--child", engine, "--model", str(model), "--npz", str(npz),
           "--texts", str(texts_file), "--threads", str(a.threads), "--shape", a.shape]
    if a.batch_tokens:
        cmd += ["--batch-tokens", str(a.batch_tokens)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"{engine} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[-1][len("RESULT "):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="mini", choices=["tiny", "mini", "v4"])
    ap.add_argument("--dtype", default="F16")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--texts-count", type=int, default=300)
    ap.add_argument("--engines", default="jv4,raw,llama-server,llama-cpp-python,"
                                         "transformers-fp32,transformers-bf16")
    ap.add_argument("--sweep", action="store_true", help="also fixed lengths 16/128/512/2048")
    ap.add_argument("--batch-tokens", type=int, default=0, help="jv4 batch_tokens (0: default)")
    ap.add_argument("--name", default=None, help="results file name")
    # child mode
    ap.add_argument("--child")
    ap.add_argument("--model")
    ap.add_argument("--npz")
    ap.add_argument("--texts")
    a = ap.parse_args()
    if a.child:
        child_main(a)
        return 0

    import jv4
    from corpus import docstring_passages, fixed_length

    model, npz = make_model(a.shape, a.dtype)
    m = jv4.Model(model)
    jv4_load = {k: m.info[k] for k in ("repack", "load_mode")}
    texts = docstring_passages(a.texts_count)
    n_tokens = sum(len(m.tokenize(t, role="passage")) for t in texts)
    workloads = {"corpus": (texts, n_tokens)}
    if a.sweep:
        for L in (16, 128, 512, 2048):
            count = max(2, 4096 // L)
            tx = fixed_length(lambda s: m.tokenize(s, role="passage").tolist(), L, count)
            workloads[f"len{L}"] = (tx, L * count)
    del m

    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    skipped = {e: why for e in engines if (why := available(e))}
    engines = [e for e in engines if e not in skipped]
    for e, why in skipped.items():
        print(f"skip {e}: {why}", file=sys.stderr)

    tmp = HERE / "results"
    tmp.mkdir(exist_ok=True)
    raw = {}
    results: dict = {w: {e: [] for e in engines if e != "raw"} for w in workloads}
    for r in range(a.rounds):
        for e in engines:
            if e == "raw":
                raw.setdefault("runs", []).append(raw_forward(model, a.threads, jv4_load["repack"]))
                print(f"round {r} raw {raw['runs'][-1]}", file=sys.stderr)
                continue
            for w, (tx, nt) in workloads.items():
                f = tmp / f".texts-{w}.json"
                f.write_text(json.dumps(tx), encoding="utf-8")
                res = run_child(e, a, model, npz, f)
                res["tok_s"] = nt / res["seconds"]
                res["texts_s"] = len(tx) / res["seconds"]
                results[w][e].append(res)
                print(f"round {r} {w:7s} {e:18s} {res['tok_s']:8.1f} tok/s "
                      f"{res['peak_rss_mib']:8.0f} MiB", file=sys.stderr)

    summary = {
        "command": "python " + " ".join(sys.argv),
        "shape": a.shape, "dtype": a.dtype, "threads": a.threads, "rounds": a.rounds,
        "model_bytes": model.stat().st_size,
        "jv4_load": jv4_load,
        "build_info": {k: v for k, v in jv4.build_info().items() if k != "system_info"},
        "workloads": {w: {"texts": len(tx), "tokens": nt} for w, (tx, nt) in workloads.items()},
        "raw_forward": {k: statistics.median(x[k] for x in raw["runs"]) for k in raw["runs"][0]}
        if raw else None,
        "results": {w: {e: {"tok_s": statistics.median(x["tok_s"] for x in v),
                            "texts_s": statistics.median(x["texts_s"] for x in v),
                            "peak_rss_mib": max(x["peak_rss_mib"] for x in v),
                            "runs": v} for e, v in res.items()}
                    for w, res in results.items()},
        "skipped": skipped,
    }
    name = a.name or f"{a.shape}-{a.dtype}-t{a.threads}"
    (tmp / f"{name}.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print_table(summary)
    return 0


def print_table(s: dict) -> None:
    print(f"\n{s['shape']} {s['dtype']}, {s['threads']} threads, {s['rounds']} rounds; "
          f"model {s['model_bytes'] / 2**20:.0f} MiB")
    if s["raw_forward"]:
        print("raw forward (llama-bench): " + ", ".join(f"{k} {v:.1f} tok/s"
                                                        for k, v in s["raw_forward"].items()))
    for w, res in s["results"].items():
        wl = s["workloads"][w]
        jv = res.get("jv4", {}).get("tok_s")
        print(f"\n[{w}] {wl['texts']} texts, {wl['tokens']} tokens")
        print(f"| engine | tok/s | texts/s | peak RSS MiB | jv4 / engine |")
        print(f"|---|---:|---:|---:|---:|")
        for e, r in res.items():
            ratio = f"{jv / r['tok_s']:.2f}" if jv else "-"
            print(f"| {e} | {r['tok_s']:.1f} | {r['texts_s']:.2f} | {r['peak_rss_mib']:.0f} | {ratio} |")
        if s["raw_forward"] and jv:
            for k, v in s["raw_forward"].items():
                print(f"| raw forward {k} | {v:.1f} | | | {jv / v:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
