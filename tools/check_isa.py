#!/usr/bin/env python3
"""Checks that a compiled jv4 engine build holds no instruction above its
x86-64 level, by disassembling it (objdump -d).

    python tools/check_isa.py path/to/_core_v2.cpython-311-x86_64-linux-gnu.so x86-64-v2
    python tools/check_isa.py --installed          # every per-level build of the installed jv4

x86-64-v2 may use no VEX/EVEX encoding at all (no ymm/zmm registers, no
v-prefixed AVX mnemonics, no FMA/F16C/BMI/MOVBE); x86-64-v3 no AVX-512 (no
zmm, no mask registers, no xmm/ymm16-31, no AVX-512-only or VNNI/BF16
mnemonics, no AMX). The avx512 build is allowed everything: its AMX tile
instructions are jv4's BF16 kernel's, run only once CPUID, XCR0 and Linux's
permission (arch_prctl) say the tiles are usable
(patches/llama.cpp/files/ggml/src/ggml-cpu/jv4-bf16-dp.inc); ggml's own AMX
backend is not built. Prints the first offending lines and exits 1 when a
build breaks its level.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

# Mnemonics starting with "v" that are not AVX (virtualisation, segment checks).
_V_NOT_AVX = re.compile(r"^(verr|verw|vmcall|vmlaunch|vmresume|vmxoff|vmxon|vmread|vmwrite|vmptr\w*|"
                        r"vmclear|vmfunc|vmrun|vmload|vmsave|vmmcall)$")
# BMI1/BMI2/MOVBE/LZCNT. (tzcnt is left out: compilers emit `rep bsf`, which
# objdump prints as tzcnt and which runs as bsf on CPUs without BMI1.)
_V3_SCALAR = re.compile(r"^(andn|bextr|blsi|blsmsk|blsr|bzhi|mulx|pdep|pext|rorx|sarx|shlx|shrx|"
                        r"movbe|lzcnt)$")
_AVX512_ONLY = re.compile(r"^(k\w+|vpternlog\w*|vperm[it]2\w*|vpcompress\w*|vpexpand\w*|vcompress\w*|"
                          r"vexpand\w*|vpdpbusd\w*|vpdpwssd\w*|vdpbf16ps|vcvtne2ps2bf16|vcvtneps2bf16|"
                          r"vpermb|vpmultishiftqb|vrndscale\w*|vscalef\w*|vgetexp\w*|vgetmant\w*|"
                          r"vfixupimm\w*|vrange\w*|vreduce\w*|vpmovm2\w*|vpmov\w2m|vpconflict\w*|"
                          r"vplzcnt\w*|valign[dq]|vpro[lr]v?[dq]|vpsravw|vpsllvw|vpsrlvw|vpabsq|"
                          r"vp(max|min)[su]q|vpmullq|vcvt\w*2u\w*|vcvtu\w*)$")
_AMX = re.compile(r"^(tileload\w*|tilestore\w*|tilezero|tdp\w+|ldtilecfg|sttilecfg|tilerelease)$")
_HIGH_REGS = re.compile(r"%[xy]mm(1[6-9]|2\d|3[01])\b")

# module -> level, from the levels' one definition (python/jv4/cpu_levels.json)
LEVELS_FILE = Path(__file__).resolve().parent.parent / "python" / "jv4" / "cpu_levels.json"
LEVEL_OF_MODULE = {lvl["module"]: lvl["name"] for lvl in json.loads(LEVELS_FILE.read_text(encoding="utf-8"))["levels"]}
HIGHEST = next(iter(LEVEL_OF_MODULE.values()))  # best first: allowed everything (AMX behind its run-time check)


def violation(level: str, mnemonic: str, operands: str) -> bool:
    if level == HIGHEST:
        return False
    if _AMX.match(mnemonic):
        return True
    if "%zmm" in operands or re.search(r"%k[0-7]\b", operands) or "{1to" in operands \
            or _HIGH_REGS.search(operands) or _AVX512_ONLY.match(mnemonic):
        return True
    if level == "x86-64-v3":
        return False
    return "%ymm" in operands or (mnemonic.startswith("v") and not _V_NOT_AVX.match(mnemonic)) \
        or bool(_V3_SCALAR.match(mnemonic))


def check(path: Path, level: str, show: int = 10) -> list:
    objdump = shutil.which("objdump")
    if objdump is None:
        raise SystemExit("objdump not found (binutils)")
    proc = subprocess.Popen([objdump, "-d", "--no-show-raw-insn", str(path)], stdout=subprocess.PIPE,
                            text=True, errors="replace")
    bad, func = [], ""
    for line in proc.stdout:
        if line.endswith(">:\n"):
            func = line.strip()
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        ins = parts[1].strip().split(None, 1)
        if not ins:
            continue
        mnemonic = ins[0]
        if mnemonic in ("rep", "repz", "repnz", "lock", "notrack", "bnd", "data16", "cs", "ds") and len(ins) > 1:
            ins = ins[1].split(None, 1)
            mnemonic = ins[0]
        operands = ins[1] if len(ins) > 1 else ""
        if violation(level, mnemonic, operands):
            bad.append(f"{func} {line.strip()}")
    proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"objdump failed on {path}")
    return bad


def installed_builds() -> list:
    import importlib.util

    spec = importlib.util.find_spec("jv4")
    pkg = Path(spec.origin).parent
    out = []
    for f in sorted(pkg.iterdir()):
        name = f.name.split(".", 1)[0]
        if name in LEVEL_OF_MODULE and f.suffix in (".so", ".pyd"):
            out.append((f, LEVEL_OF_MODULE[name]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("module", nargs="?", type=Path)
    ap.add_argument("level", nargs="?", choices=sorted(set(LEVEL_OF_MODULE.values())))
    ap.add_argument("--installed", action="store_true", help="check the installed jv4's per-level builds")
    a = ap.parse_args(argv)
    targets = installed_builds() if a.installed else [(a.module, a.level)]
    if not targets or any(t is None for pair in targets for t in pair):
        ap.error("give MODULE LEVEL, or --installed with a jv4 that has per-level builds")
    failed = False
    for path, level in targets:
        bad = check(path, level)
        print(f"{path.name}: {level}: {'ok' if not bad else f'{len(bad)} instructions above the level'}")
        for b in bad[:10]:
            print("   ", b)
        failed |= bool(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
