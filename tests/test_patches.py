"""jv4's llama.cpp patches (patches/llama.cpp/) and the applier in
tools/fetch_llama_cpp.py: every hunk applies exactly once or the fetch fails
naming the patch, the file and the hunk; the series and the new files are
what the vendored tree and build_info() hold."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import fetch_llama_cpp as fetch  # noqa: E402

pytestmark = pytest.mark.source

PATCHES = ROOT / "patches" / "llama.cpp"
VENDORED = ROOT / "vendor" / "llama.cpp"

SOURCE = "int a;\nint b;\nint c;\n\nint d;\nint e;\nint f;\n"
PATCH = """Two hunks, for the applier's tests.

--- a/src/x.cpp
+++ b/src/x.cpp
@@ -1,3 +1,4 @@
 int a;
+int a2;
 int b;
 int c;
@@ -5,3 +6,3 @@
 int d;
-int e;
+int e2;
 int f;
"""


def _tree(tmp_path: Path, source: str = SOURCE, patch: str = PATCH, series: str = "0001-two.patch\n"):
    root = tmp_path / "tree"
    (root / "src").mkdir(parents=True)
    (root / "src" / "x.cpp").write_text(source)
    pdir = tmp_path / "patches"
    pdir.mkdir()
    (pdir / "0001-two.patch").write_text(patch)
    (pdir / "series").write_text(series)
    return root, pdir


def test_a_patch_applies_its_hunks_in_order(tmp_path):
    root, pdir = _tree(tmp_path)
    assert fetch.apply_patches(root, pdir) == ["0001-two.patch"]
    assert (root / "src" / "x.cpp").read_text() == "int a;\nint a2;\nint b;\nint c;\n\nint d;\nint e2;\nint f;\n"


def test_a_hunk_that_does_not_match_names_patch_file_and_hunk(tmp_path):
    root, pdir = _tree(tmp_path, source=SOURCE.replace("int e;", "int E;"))
    with pytest.raises(fetch.FetchError, match=r"0001-two\.patch: src/x\.cpp hunk 2 \(@@ -5,3 \+6,3 @@\) "
                                               r"does not apply: .* occur 0 times"):
        fetch.apply_patches(root, pdir)


def test_a_hunk_that_matches_twice_is_refused(tmp_path):
    root, pdir = _tree(tmp_path, source=SOURCE + "int d;\nint e;\nint f;\n")
    with pytest.raises(fetch.FetchError, match=r"hunk 2 .* occur 2 times \(must be once\)"):
        fetch.apply_patches(root, pdir)


def test_applying_twice_fails(tmp_path):
    root, pdir = _tree(tmp_path)
    fetch.apply_patches(root, pdir)
    with pytest.raises(fetch.FetchError, match=r"hunk 1 .* occur 0 times"):
        for patch in fetch.read_series(pdir):
            fetch.apply_patch(root, patch)


def test_a_damaged_hunk_is_refused_before_anything_is_written(tmp_path):
    root, pdir = _tree(tmp_path, patch=PATCH.replace(" int f;\n", ""))
    with pytest.raises(fetch.FetchError, match=r"src/x\.cpp hunk 2 .* header says 3 old / 3 new lines, "
                                               r"the body has 2 / 2"):
        fetch.apply_patches(root, pdir)
    assert (root / "src" / "x.cpp").read_text() == SOURCE


def test_the_series_lists_every_patch_and_only_existing_ones(tmp_path):
    root, pdir = _tree(tmp_path)
    (pdir / "0002-stray.patch").write_text(PATCH)
    with pytest.raises(fetch.FetchError, match="does not list 0002-stray.patch"):
        fetch.apply_patches(root, pdir)
    (pdir / "0002-stray.patch").unlink()
    (pdir / "series").write_text("0001-two.patch\n0003-gone.patch  # a comment\n")
    with pytest.raises(fetch.FetchError, match="lists 0003-gone.patch"):
        fetch.apply_patches(root, pdir)


def test_new_files_never_replace_llama_cpp_files(tmp_path):
    root, pdir = _tree(tmp_path)
    (pdir / "files" / "src").mkdir(parents=True)
    (pdir / "files" / "src" / "kernel.inc").write_text("// new\n")
    fetch.apply_patches(root, pdir)
    assert (root / "src" / "kernel.inc").read_text() == "// new\n"
    root2, _ = _tree(tmp_path / "again")
    (pdir / "files" / "src" / "x.cpp").write_text("// would replace\n")
    with pytest.raises(fetch.FetchError, match=r"files/src/x\.cpp: would replace llama\.cpp's own file"):
        fetch.apply_patches(root2, pdir)


def test_the_digest_follows_every_byte_of_the_patch_folder(tmp_path):
    pdir = tmp_path / "p"
    shutil.copytree(PATCHES, pdir)
    before = fetch.extraction_digest(pdir)
    assert before == fetch.extraction_digest(PATCHES)
    kernel = next((pdir / "files").rglob("*.inc"))
    kernel.write_text(kernel.read_text() + "\n")
    assert fetch.extraction_digest(pdir) != before


def test_the_fetch_of_the_pinned_archive_fails_on_a_broken_patch(tmp_path):
    # the real series, one context line of one hunk changed: the fetch stops
    # with the patch, the file and the hunk, and leaves no tree behind
    archive = _archive()
    pdir = tmp_path / "patches"
    shutil.copytree(PATCHES, pdir)
    patch = pdir / "0004-q8_0-vnni-repack.patch"
    text = patch.read_text()
    context = " static const ggml::cpu::repack::tensor_traits<block_q8_0, 8, 4, GGML_TYPE_Q8_0> q8_0_4x8_q8_0;\n"
    assert text.count(context) == 1
    patch.write_text(text.replace(context, context.replace("q8_0_4x8_q8_0;", "q8_0_4x8_q8_0_renamed;")))
    dest = tmp_path / "llama.cpp"
    with pytest.raises(fetch.FetchError, match=r"0004-q8_0-vnni-repack\.patch: ggml/src/ggml-cpu/repack\.cpp "
                                               r"hunk 3 \(@@ .* @@\) does not apply"):
        fetch.fetch(dest=dest, archive=archive, patch_dir=pdir)
    assert not dest.exists()
    assert list(tmp_path.glob(".fetch-*")) == []


def _archive() -> Path:
    archive = VENDORED.parent / fetch.read_lock()["archive"]
    if not archive.is_file():
        pytest.skip("the pinned archive is not in vendor/ (the build fetched it elsewhere)")
    return archive


def test_the_vendored_tree_is_the_archive_with_the_series_applied(tmp_path):
    stamp = (VENDORED / fetch.STAMP_NAME).read_text()
    names = [p.name for p in fetch.read_series(PATCHES)]
    assert f"series={','.join(names)}\n" in stamp
    assert f"patches={fetch.extraction_digest(PATCHES)}\n" in stamp
    fresh = fetch.fetch(dest=tmp_path / "llama.cpp", archive=_archive())
    touched = {rel for rel, _ in fetch.new_files(PATCHES)}
    touched |= {section.path for patch in fetch.read_series(PATCHES) for section in fetch.parse_patch(patch)}
    assert len(touched) > 10
    for rel in sorted(touched):
        assert (fresh / rel).read_bytes() == (VENDORED / rel).read_bytes(), rel


def test_build_info_lists_the_applied_patches():
    import jv4

    names = [p.name for p in fetch.read_series(PATCHES)]
    assert jv4.build_info()["llama_cpp"]["patches"] == names


def test_patch_files_carry_a_description_and_the_fetch_script_no_c_source():
    for patch in fetch.read_series(PATCHES):
        head = patch.read_text(encoding="utf-8").split("\n--- a/", 1)[0]
        assert len(head.split()) > 30, f"{patch.name}: say why, what was measured and what tests it"
    script = (ROOT / "tools" / "fetch_llama_cpp.py").read_text(encoding="utf-8")
    for c_token in ("#include", "_mm512_", "GGML_ASSERT", "static inline", "template <"):
        assert c_token not in script, c_token
