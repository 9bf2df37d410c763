"""Ray Data against one in-process Model, same corpus, same run.

    python bench/ray_throughput.py --shape mini --dtype Q4_K_M --texts 400 --rounds 2

Layouts, each timed from the dataset to its materialized result (actor
start-up and model load included, as a user pays them) and, for Ray, the
engine time inside the actors (from Ray Data's stats) to separate Ray's own
overhead:
- ``local``: ``jv4.Model(n_threads=2)`` load + one ``embed`` call;
- ``ray 1x2``: ``jv4.ray.embed_dataset(actors=1, threads_per_actor=2)``;
- ``ray 2x1``: ``jv4.ray.embed_dataset(actors=2, threads_per_actor=1)``.
Ray is started once (``ray.init(num_cpus=2)``, timed apart). Each Ray row
counts the actor processes that did the work. Results:
bench/results/ray-<shape>-<dtype>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import jv4.ray as jray  # noqa: E402


class Counted(jray.EmbedBatches):
    """EmbedBatches that records which process embedded each row."""

    def __call__(self, batch):
        import pyarrow as pa

        out = super().__call__(batch)
        return out.append_column("pid", pa.array([os.getpid()] * out.num_rows))


def engine_seconds(stats: str) -> float:
    """Sum of the map operator's remote wall time, from Dataset.stats()."""
    lines = stats.splitlines()
    for i, line in enumerate(lines):
        if "MapBatches(" in line:
            for sub in lines[i + 1:i + 4]:
                if "Remote wall time" in sub:
                    total = sub.rsplit(",", 1)[1].strip().split()[0]
                    return _seconds(total)
    return float("nan")


def _seconds(text: str) -> float:
    for unit, f in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * f
    return float(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="mini", choices=("tiny", "mini", "v4"))
    ap.add_argument("--dtype", default="Q4_K_M")
    ap.add_argument("--texts", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    a = ap.parse_args()

    import numpy as np
    import ray

    import jv4
    from corpus import docstring_passages
    from run import make_model

    path, _ = make_model(a.shape, a.dtype)
    texts = docstring_passages(a.texts)
    probe = jv4.Model(path)
    n_tok = sum(len(probe.tokenize(t, role="passage")) for t in texts)
    probe.close()

    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(HERE)}})
    ray_init_s = time.perf_counter() - t
    ray.data.DataContext.get_current().enable_progress_bars = False
    jray.EmbedBatches = Counted  # embed_dataset as users call it, with a pid column

    def local():
        t0 = time.perf_counter()
        m = jv4.Model(path, n_threads=2)
        out = m.embed(texts, role="passage")
        return time.perf_counter() - t0, out, None, 1

    def ray_run(actors, threads):
        def run():
            ds = ray.data.from_items([{"id": i, "text": s} for i, s in enumerate(texts)])
            t0 = time.perf_counter()
            res = jray.embed_dataset(ds, path, role="passage", actors=actors, threads_per_actor=threads,
                                     batch_size=a.batch_size).materialize()
            wall = time.perf_counter() - t0
            rows = res.take_all()
            vecs = np.zeros((len(texts), len(rows[0]["embedding"])), np.float32)
            for r in rows:
                vecs[r["id"]] = r["embedding"]
            return wall, vecs, engine_seconds(res.stats()), len({r["pid"] for r in rows})
        return run

    layouts = {"local 1x2": local, "ray 1x2": ray_run(1, 2), "ray 2x1": ray_run(2, 1)}
    walls: dict = {k: [] for k in layouts}
    engine: dict = {k: [] for k in layouts}
    actors_seen: dict = {k: [] for k in layouts}
    base = None
    for r in range(a.rounds):
        for name, fn in layouts.items():
            wall, vecs, eng, procs = fn()
            walls[name].append(wall)
            engine[name].append(eng)
            actors_seen[name].append(procs)
            if base is None:
                base = vecs
            diff = float(np.abs(vecs - base).max())
            print(f"round {r + 1} {name:10s} {wall:7.2f} s  {n_tok / wall:7.0f} tok/s  "
                  f"engine {eng if eng else float('nan'):6.2f} s  processes {procs}  max|diff| {diff:.1e}",
                  flush=True)
    ref = statistics.median(walls["local 1x2"])
    result = {"shape": a.shape, "dtype": a.dtype, "texts": len(texts), "tokens": n_tok,
              "ray_init_s": ray_init_s, "rounds": a.rounds, "batch_size": a.batch_size, "layouts": {}}
    print(f"\nray.init: {ray_init_s:.2f} s; {len(texts)} texts, {n_tok} tokens")
    print("| layout | wall s (median) | tok/s | × local | engine s in actors | processes |")
    for name in layouts:
        w = statistics.median(walls[name])
        e = [x for x in engine[name] if x is not None]
        result["layouts"][name] = {"wall_s": walls[name], "engine_s": e, "processes": actors_seen[name]}
        print(f"| {name} | {w:.2f} | {n_tok / w:.0f} | {ref / w:.2f} | "
              f"{statistics.median(e) if e else float('nan'):.2f} | {actors_seen[name]} |")
    out = HERE / "results" / f"ray-{a.shape}-{a.dtype}.json"
    out.write_text(json.dumps(result, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main()
