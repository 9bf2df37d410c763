"""Chart of tokens/s per engine and workload from a bench/run.py results file.

    python bench/chart.py bench/results/mini-F16-t2.json docs/bench-mini-F16.png
"""

from __future__ import annotations

import json
import sys


def main(src: str, dst: str) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = json.loads(open(src, encoding="utf-8").read())
    workloads = list(s["results"])
    engines = list(dict.fromkeys(e for w in workloads for e in s["results"][w]))
    width = 0.8 / max(1, len(engines))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, e in enumerate(engines):
        xs = [j + i * width for j in range(len(workloads))]
        ys = [s["results"][w].get(e, {}).get("tok_s", 0) for w in workloads]
        ax.bar(xs, ys, width, label=e)
    if s.get("raw_forward"):
        raw = s["raw_forward"]
        for v in raw.values():
            ax.axhline(v, linestyle="--", linewidth=1, color="gray")
        label = "raw forward " + ", ".join(f"{k} {v:.0f}" for k, v in raw.items())
        ax.text(len(workloads) - 0.4, max(raw.values()), label, fontsize=8, va="bottom", ha="right")
    ax.set_xticks([j + width * (len(engines) - 1) / 2 for j in range(len(workloads))])
    ax.set_xticklabels([f"{w}\n({s['workloads'][w]['tokens']} tok)" for w in workloads])
    ax.set_ylabel("tokens / s")
    ax.set_title(f"{s['shape']} shape, {s['dtype']}, {s['threads']} threads (higher is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
