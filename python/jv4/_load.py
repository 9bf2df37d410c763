"""Loads the compiled engine: the one build of a source install, or, in a
wheel that carries one build per x86-64 level, the best this CPU can run.

A wheel for x86-64 holds one module per level of cpu_levels.json (`_core_v2`
for x86-64-v2, `_core_v3` for x86-64-v3, `_core_avx512`), all statically
linked, differing only in compiler flags. `_cpuinfo` (compiled for plain x86-64) reads CPUID and XCR0
first, so a build is never imported on a CPU or OS that cannot run it.
`JV4_CPU=x86-64-v2|x86-64-v3|avx512` forces a level; `JV4_CPU=auto` (or unset)
picks the best. The choice and its reason are in `jv4.build_info()["dispatch"]`.
A source build (`pip install .`) has one `_core`, built for
`JV4_CPU_BASELINE` (default: the build machine), and no choice to make.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from types import ModuleType

# best first: (level name, module, CPU features it needs), from the one
# definition the build and tools/check_isa.py read too
with open(os.path.join(os.path.dirname(__file__), "cpu_levels.json"), encoding="utf-8") as _f:
    _DEFINED = json.load(_f)["levels"]
LEVELS = tuple((lvl["name"], lvl["module"], tuple(lvl["cpu"])) for lvl in _DEFINED)
LOWEST = _DEFINED[-1]

dispatch: dict = {}


def _has(name: str) -> bool:
    return importlib.util.find_spec(f"{__package__}.{name}") is not None


def choose(features: dict, available: list, forced: str = "auto") -> tuple:
    """(levels to try in order, reason, levels the CPU supports) for a CPU
    with `features` (as `_cpuinfo.features()` reports them) and the builds
    `available`.
    Raises ImportError when none can run."""
    names = [lvl for lvl, _, _ in LEVELS]
    need = {lvl: n for lvl, _, n in LEVELS}
    supported = [lvl for lvl in names if all(features.get(f) for f in need[lvl])]
    forced = (forced or "auto").strip() or "auto"
    if forced != "auto":
        if forced not in names:
            raise ImportError(f"jv4: JV4_CPU must be 'auto' or one of {', '.join(names)} (got {forced!r})")
        if forced not in available:
            raise ImportError(f"jv4: JV4_CPU={forced}: this package has no build for it "
                              f"(it has {', '.join(available)})")
        if forced not in supported:
            missing = [f for f in need[forced] if not features.get(f)]
            raise ImportError(f"jv4: JV4_CPU={forced}: this CPU (or OS) cannot run it; missing "
                              f"{', '.join(missing)}")
        return [forced], f"forced by JV4_CPU={forced}", supported
    order = [lvl for lvl in names if lvl in supported and lvl in available]
    if not order:
        raise ImportError(f"jv4: this CPU supports none of the builds in the package "
                          f"({', '.join(available)}); {LOWEST['name']} ({LOWEST['summary']}) is the minimum")
    return order, "the best level this CPU and OS support (CPUID, XCR0)", supported


def _load() -> ModuleType:
    pkg = __package__
    if _has("_core"):
        mod = importlib.import_module(f"{pkg}._core")
        dispatch.update(loaded="_core", level=None, available=["_core"],
                        reason="source build: one module, built for JV4_CPU_BASELINE")
        return mod
    available = [lvl for lvl, mod, _ in LEVELS if _has(mod)]
    if not available:
        raise ImportError("jv4: no compiled engine found in the package (neither _core nor a "
                          "per-level _core_*); reinstall jv4")
    from . import _cpuinfo

    order, reason, supported = choose(_cpuinfo.features(), available, os.environ.get("JV4_CPU", "auto"))
    module_of = {lvl: m for lvl, m, _ in LEVELS}
    errors = []
    for lvl in order:
        try:
            mod = importlib.import_module(f"{pkg}.{module_of[lvl]}")
        except ImportError as err:  # a damaged file: fall back to the next level
            errors.append(f"{module_of[lvl]}: {err}")
            continue
        if errors:
            reason += f" (after failing to import {'; '.join(errors)})"
        dispatch.update(loaded=module_of[lvl], level=lvl, available=available, supported=supported,
                        reason=reason)
        return mod
    raise ImportError("jv4: could not import an engine build: " + "; ".join(errors))


core = _load()
# `from . import _core` everywhere else gets the chosen build
sys.modules[f"{__package__}._core"] = core
