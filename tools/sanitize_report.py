"""Reads the ASan / LSan / UBSan logs of tools/sanitize.sh and reports what
comes from jv4, llama.cpp or ggml code.

    python tools/sanitize_report.py build/sanitize/logs

A report counts as ours when one of its stack frames is in jv4's sources
(csrc/), the vendored llama.cpp (vendor/llama.cpp/) or the jv4 module. Leaks
whose whole allocation stack is elsewhere (the Python interpreter keeps most
of its objects until exit, by design; numpy, torch) are counted apart and do
not fail the run. Exit status 1 when anything of ours is found.
"""

from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

# jv4's sources, the vendored llama.cpp, or the jv4 module itself
# (site-packages/jv4/_core*.so; not another package's "_core" module)
OURS = re.compile(r"/csrc/|/vendor/llama\.cpp/|/jv4/_core[^/ ]*\.so")


def blocks(text: str, start: re.Pattern) -> list:
    """Splits a log into the blocks that begin where `start` matches."""
    out, cur = [], None
    for line in text.splitlines():
        if start.search(line):
            if cur is not None:
                out.append(cur)
            cur = [line]
        elif cur is not None:
            cur.append(line)
    if cur is not None:
        out.append(cur)
    return out


def main() -> int:
    logs = Path(sys.argv[1] if len(sys.argv) > 1 else "build/sanitize/logs")
    files = sorted(logs.glob("*"))
    asan, asan_other, ubsan, leaks_ours, leaks_other = [], [], collections.Counter(), [], 0
    for f in files:
        text = f.read_text(errors="replace")
        for b in blocks(text, re.compile(r"ERROR: AddressSanitizer")):
            # ours when the access, the free or the allocation has a frame of ours
            (asan if OURS.search("\n".join(b)) else asan_other).append((f.name, "\n".join(b[:25])))
        for b in blocks(text, re.compile(r"^(Direct|Indirect) leak of")):
            stack = "\n".join(b[:40])
            if OURS.search(stack):
                leaks_ours.append((f.name, stack))
            else:
                leaks_other += 1
        for line in text.splitlines():
            m = re.search(r"(\S+:\d+:\d+): runtime error: (.*)", line)
            if m:
                ubsan[(m.group(1), m.group(2)[:120])] += 1
    ubsan_ours = {k: v for k, v in ubsan.items() if OURS.search(k[0])}
    print(f"sanitizer logs: {len(files)} files in {logs}")
    print(f"AddressSanitizer errors with a jv4/llama.cpp/ggml frame: {len(asan)}; elsewhere: {len(asan_other)}")
    for name, b in (asan + asan_other)[:5]:
        print(f"--- {name}\n{b}")
    print(f"UndefinedBehaviorSanitizer: {len(ubsan_ours)} places in jv4/llama.cpp/ggml "
          f"({sum(ubsan_ours.values())} reports); elsewhere: {len(ubsan) - len(ubsan_ours)}")
    for (where, what), n in sorted(ubsan_ours.items(), key=lambda kv: -kv[1])[:20]:
        print(f"  {where}: {what} (x{n})")
    print(f"LeakSanitizer: {len(leaks_ours)} leaks with a jv4/llama.cpp/ggml frame; "
          f"{leaks_other} elsewhere (not counted)")
    for name, stack in leaks_ours[:5]:
        print(f"--- {name}\n{stack}")
    return 1 if asan or ubsan_ours or leaks_ours else 0


if __name__ == "__main__":
    sys.exit(main())
