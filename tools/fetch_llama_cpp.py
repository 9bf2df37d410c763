#!/usr/bin/env python3
"""Fill vendor/llama.cpp/ from the pinned llama-cpp-python source distribution.

The pin (package, version, sha256, llama.cpp commit) lives in
vendor/llama.cpp.lock. The archive is fetched with pip by name and version,
its sha256 is checked against the lock, and only the parts of llama.cpp that
jv4's build, tests and benchmarks need are extracted; then jv4's patches
(patches/llama.cpp/: new files, then the diffs `series` lists, each hunk
applying exactly once) change it. CMakeLists.txt runs this script when
vendor/llama.cpp/ is missing or stale; it can also be run by hand:

    python tools/fetch_llama_cpp.py            # fetch if needed
    python tools/fetch_llama_cpp.py --force    # fetch again
    python tools/fetch_llama_cpp.py --archive path/to/sdist.tar.gz
    python tools/fetch_llama_cpp.py --no-patches --dest /tmp/upstream   # as released

Only the standard library is used, so it runs inside pip's isolated build
environment too.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "vendor" / "llama.cpp.lock"
DEST = ROOT / "vendor" / "llama.cpp"
STAMP_NAME = ".jv4-fetched"

# Paths inside llama.cpp that are kept; everything else in the archive is dropped.
KEEP_PREFIXES = (
    "CMakeLists.txt",
    "LICENSE",
    "licenses/",
    "cmake/",
    "include/",
    "src/",
    "ggml/",
    # common + third-party headers + the two tools are for the benchmarks
    "common/",
    "vendor/",
    "tools/CMakeLists.txt",
    "tools/server/",
    "tools/llama-bench/",
    "tools/mtmd/",  # llama-server links it
    "tools/ui/",    # llama-server links it (built without web assets)
    "scripts/ui-assets.cmake",
    "models/ggml-vocab-qwen2.gguf",  # also matches the .inp/.out test vectors
)


# jv4's changes to llama.cpp: patches/llama.cpp/ holds them as unified diffs
# (`series` gives their order, each file opens with its why, measurement and
# test) plus files/, new sources (kernels) copied into the tree at the same
# relative paths before the diffs apply. patches/llama.cpp/README.md says how
# to read, add and refresh them.
PATCH_DIR = ROOT / "patches" / "llama.cpp"


class FetchError(RuntimeError):
    pass


@dataclass
class Hunk:
    """One @@ block of a unified diff: the lines it expects (context and
    removed) and the lines it leaves (context and added)."""
    number: int   # 1-based within its file's section of the patch
    header: str   # the @@ line
    old: list
    new: list


@dataclass
class FileDiff:
    path: str     # relative to the llama.cpp root (the b/ side, prefix stripped)
    hunks: list


def _diff_path(line: str, patch: Path, lineno: int) -> str:
    name = line[4:].split("\t", 1)[0].strip()
    if name == "/dev/null" or not name.startswith(("a/", "b/")):
        raise FetchError(f"{patch.name}:{lineno}: expected a path a/... or b/... (new files go in "
                         f"{PATCH_DIR.name}/files/), got {name!r}")
    return name[2:]


def parse_patch(patch: Path) -> list:
    """The file sections of a unified diff (text before the first `--- a/`
    line is its description). Hunk line counts are checked against the
    header, so a truncated or hand-damaged hunk is refused here."""
    lines = patch.read_text(encoding="utf-8").splitlines(keepends=True)
    files: list = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not (line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ ")):
            if files and line.strip() and not line.startswith(("diff ", "index ")):
                raise FetchError(f"{patch.name}:{i + 1}: unexpected line outside a hunk: {line.rstrip()!r}")
            i += 1
            continue
        old_path = _diff_path(line, patch, i + 1)
        new_path = _diff_path(lines[i + 1], patch, i + 2)
        if old_path != new_path:
            raise FetchError(f"{patch.name}:{i + 1}: renames are not supported ({old_path} -> {new_path})")
        section = FileDiff(new_path, [])
        files.append(section)
        i += 2
        while i < len(lines) and lines[i].startswith("@@"):
            m = re.match(r"@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@", lines[i])
            number = len(section.hunks) + 1
            if not m:
                raise FetchError(f"{patch.name}:{i + 1}: {new_path} hunk {number}: malformed header {lines[i].rstrip()!r}")
            want_old = int(m.group(1) or 1)
            want_new = int(m.group(2) or 1)
            hunk = Hunk(number, lines[i].rstrip("\n"), [], [])
            i += 1
            while i < len(lines) and (len(hunk.old) < want_old or len(hunk.new) < want_new):
                tag, text = lines[i][:1], lines[i][1:]
                if tag == "\\":  # "\ No newline at end of file"
                    i += 1
                    continue
                if tag not in (" ", "-", "+") and lines[i] != "\n":
                    break
                if lines[i] == "\n":  # an empty context line whose space was stripped
                    tag, text = " ", "\n"
                if tag in (" ", "-"):
                    hunk.old.append(text)
                if tag in (" ", "+"):
                    hunk.new.append(text)
                i += 1
            if len(hunk.old) != want_old or len(hunk.new) != want_new:
                raise FetchError(f"{patch.name}: {new_path} hunk {number} ({hunk.header}): the header says "
                                 f"{want_old} old / {want_new} new lines, the body has "
                                 f"{len(hunk.old)} / {len(hunk.new)}")
            section.hunks.append(hunk)
        if not section.hunks:
            raise FetchError(f"{patch.name}: {new_path}: a file section without hunks")
    if not files:
        raise FetchError(f"{patch.name}: holds no diff")
    return files


def _find(lines: list, block: list) -> list:
    n = len(block)
    first = block[0] if block else None
    return [k for k in range(len(lines) - n + 1) if lines[k] == first and lines[k:k + n] == block]


def apply_patch(root: Path, patch: Path) -> None:
    """Applies one patch file to the tree at root. Each hunk's expected lines
    must occur exactly once in the file as the earlier hunks left it (no
    offsets, no fuzz): anything else fails naming the patch, file and hunk."""
    for section in parse_patch(patch):
        target = root / section.path
        if not target.is_file():
            raise FetchError(f"{patch.name}: {section.path}: no such file in the pinned llama.cpp")
        text = target.read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        for hunk in section.hunks:
            where = _find(lines, hunk.old)
            if len(where) != 1:
                raise FetchError(
                    f"{patch.name}: {section.path} hunk {hunk.number} ({hunk.header}) does not apply: its "
                    f"{len(hunk.old)} expected lines occur {len(where)} times (must be once); the pinned "
                    "llama.cpp and the patch disagree")
            k = where[0]
            lines[k:k + len(hunk.old)] = hunk.new
        target.write_text("".join(lines), encoding="utf-8")


def read_series(patch_dir: Path) -> list:
    """The patch files in the order patches/llama.cpp/series lists them."""
    series = patch_dir / "series"
    if not series.is_file():
        raise FetchError(f"{series} is missing: the patch folder must list its patches in order")
    names = [ln.split("#", 1)[0].strip() for ln in series.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n]
    listed = set(names)
    unlisted = sorted(p.name for p in patch_dir.glob("*.patch") if p.name not in listed)
    if unlisted:
        raise FetchError(f"{series}: does not list {', '.join(unlisted)} (list it, or delete it)")
    paths = [patch_dir / n for n in names]
    for p in paths:
        if not p.is_file():
            raise FetchError(f"{series}: lists {p.name}, which is not in {patch_dir}")
    return paths


def new_files(patch_dir: Path) -> list:
    """(relative path, source) of every file patches/llama.cpp/files/ adds to the tree."""
    base = patch_dir / "files"
    if not base.is_dir():
        return []
    return sorted((p.relative_to(base).as_posix(), p) for p in base.rglob("*") if p.is_file())


def apply_patches(root: Path, patch_dir: Path | None) -> list:
    """Copies the new files into the tree, then applies the series in order.
    Returns the names of the applied patches."""
    if patch_dir is None:
        return []
    for rel, src in new_files(patch_dir):
        dst = root / rel
        if dst.exists():
            raise FetchError(f"{patch_dir.name}/files/{rel}: would replace llama.cpp's own file; "
                             "change it with a patch instead")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    applied = []
    for patch in read_series(patch_dir):
        apply_patch(root, patch)
        applied.append(patch.name)
    return applied


def extraction_digest(patch_dir: Path | None) -> str:
    """Identifies what an extraction holds: the kept paths and every byte of
    the series, the patches and the new files (any change re-extracts)."""
    digest = hashlib.sha256(repr(KEEP_PREFIXES).encode())
    if patch_dir is not None:
        for path in [patch_dir / "series"] + read_series(patch_dir):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        for rel, src in new_files(patch_dir):
            digest.update(rel.encode() + b"\0" + src.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def read_lock(path: Path = LOCK) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise FetchError(f"{path}: malformed line {line!r}")
        fields[key.strip()] = value.strip()
    for key in ("package", "version", "archive", "sha256", "llama_cpp_commit"):
        if key not in fields:
            raise FetchError(f"{path}: missing field {key!r}")
    return fields


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(archive: Path, expected: str) -> None:
    actual = sha256_of(archive)
    if actual != expected:
        raise FetchError(
            f"sha256 checksum mismatch for {archive}:\n"
            f"  expected {expected} (vendor/llama.cpp.lock)\n"
            f"  got      {actual}\n"
            "The archive is corrupt or not the pinned release; delete it and fetch again."
        )


def pip_download(lock: dict[str, str], into: Path) -> Path:
    """Download the sdist with pip, by name and version."""
    spec = f"{lock['package']}=={lock['version']}"
    # -I: ignore PYTHONPATH, so that inside pip's isolated build environment the
    # interpreter's own pip is found again.
    cmd = [
        sys.executable, "-I", "-m", "pip", "download",
        "--no-deps", "--no-binary", lock["package"],
        "--disable-pip-version-check", "-d", str(into), spec,
    ]
    print(f"jv4: fetching {spec} with pip", file=sys.stderr, flush=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    archive = into / lock["archive"]
    if proc.returncode != 0 or not archive.is_file():
        raise FetchError(
            f"pip could not download {spec} (exit {proc.returncode}).\n"
            f"{proc.stdout[-3000:]}\n"
            "Download it yourself and pass it with --archive "
            "(or set JV4_LLAMA_CPP_ARCHIVE for the build)."
        )
    return archive


def extract(archive: Path, lock: dict[str, str], dest: Path, patch_dir: Path | None) -> None:
    prefix = f"{lock['archive'].removesuffix('.tar.gz')}/vendor/llama.cpp/"
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest.parent))
    try:
        kept = 0
        with tarfile.open(archive, "r:gz") as tar:
            members = []
            for m in tar.getmembers():
                if not m.name.startswith(prefix):
                    continue
                rel = m.name[len(prefix):]
                if not rel or not rel.startswith(KEEP_PREFIXES):
                    continue
                if not (m.isfile() or m.isdir()):
                    continue  # no links or devices from an archive
                m.name = rel
                members.append(m)
                kept += m.isfile()
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=members, filter="data")
            else:  # Python without extraction filters (< 3.9.17): check names ourselves
                for m in members:
                    if m.name.startswith("/") or ".." in Path(m.name).parts:
                        raise FetchError(f"{archive}: unsafe member name {m.name!r}")
                tar.extractall(tmp, members=members)
        if kept == 0 or not (tmp / "CMakeLists.txt").is_file():
            raise FetchError(f"{archive} does not carry llama.cpp under {prefix}")
        applied = apply_patches(tmp, patch_dir)
        (tmp / STAMP_NAME).write_text(
            f"{lock['package']}=={lock['version']}\nsha256={lock['sha256']}\n"
            f"llama_cpp_commit={lock['llama_cpp_commit']}\npatches={extraction_digest(patch_dir)}\n"
            f"series={','.join(applied)}\n",
            encoding="utf-8",
        )
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        print(f"jv4: extracted {kept} llama.cpp files into {dest}", file=sys.stderr)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def is_current(dest: Path, lock: dict[str, str], patch_dir: Path | None) -> bool:
    stamp = dest / STAMP_NAME
    if not stamp.is_file():
        return False
    text = stamp.read_text(encoding="utf-8")
    return f"sha256={lock['sha256']}" in text and f"patches={extraction_digest(patch_dir)}" in text


def fetch(*, dest: Path = DEST, archive: Path | None = None, force: bool = False,
          lock_path: Path = LOCK, patched: bool = True, patch_dir: Path = PATCH_DIR) -> Path:
    lock = read_lock(lock_path)
    patches = patch_dir if patched else None
    if not force and archive is None and is_current(dest, lock, patches):
        return dest
    if archive is None:
        env_archive = os.environ.get("JV4_LLAMA_CPP_ARCHIVE")
        archive = Path(env_archive) if env_archive else None
    if archive is None:
        cached = DEST.parent / lock["archive"]  # kept in vendor/, ignored by git
        if not cached.is_file():
            with tempfile.TemporaryDirectory() as d:
                got = pip_download(lock, Path(d))
                verify(got, lock["sha256"])
                shutil.copyfile(got, cached)
        archive = cached
    if not archive.is_file():
        raise FetchError(f"archive not found: {archive}")
    verify(archive, lock["sha256"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    extract(archive, lock, dest, patches)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, help="use this sdist instead of downloading")
    ap.add_argument("--dest", type=Path, default=DEST)
    ap.add_argument("--lock", type=Path, default=LOCK)
    ap.add_argument("--force", action="store_true", help="extract again even if current")
    ap.add_argument("--patches", type=Path, default=PATCH_DIR,
                    help="the patch folder (series, *.patch, files/); default patches/llama.cpp")
    ap.add_argument("--no-patches", action="store_true",
                    help="upstream sources as released (for benchmarking peers), not for jv4")
    args = ap.parse_args(argv)
    try:
        fetch(dest=args.dest, archive=args.archive, force=args.force, lock_path=args.lock,
              patched=not args.no_patches, patch_dir=args.patches)
    except FetchError as e:
        print(f"jv4: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
