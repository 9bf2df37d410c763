"""Model names: Hugging Face repositories and `repo:quant` strings resolved
through huggingface_hub's cache (offline) and through a stand-in for the
Hub's HTTP API on 127.0.0.1 (online)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import jv4
from conftest import HUB_QUANTS as QUANTS
from conftest import file_of, hub_env, repo_of
from hubstub import HubStub
from jv4.hub import HubRef, parse_model_ref, quant_of


def run_py(code: str, env: dict) -> dict:
    """Runs `code` in a fresh interpreter (huggingface_hub reads its settings
    from the environment at import) and returns the JSON it prints."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=hub_env(env),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_cache_fixture_is_what_huggingface_hub_reads(hf_cache):
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(hf_cache)
    assert not info.warnings
    assert {r.repo_id for r in info.repos} == {repo_of(t) for t in jv4.TASKS}
    for r in info.repos:
        (rev,) = r.revisions
        assert rev.refs == frozenset({"main"})
        assert sorted(f.file_name for f in rev.files) == sorted(
            file_of(t, q) for t in jv4.TASKS for q in QUANTS if repo_of(t) == r.repo_id)


def test_offline_resolution_from_the_cache(hf_cache):
    got = run_py(f"""
        import json, jv4
        out = {{}}
        out["kw"] = jv4.Model.from_pretrained({repo_of("code")!r}, quant="f16").path
        out["kw_f32"] = jv4.Model.from_pretrained({repo_of("code")!r}, quant="F32").path
        out["colon"] = jv4.Model({repo_of("code") + ":F16"!r}).path
        out["colon_lower"] = jv4.Model({repo_of("retrieval") + ":f32"!r}).path
        def err(f):
            try:
                f()
            except Exception as e:
                return [type(e).__name__, str(e)]
        out["missing_quant"] = err(lambda: jv4.Model.from_pretrained({repo_of("code")!r}, quant="Q4_K_M"))
        out["uncached"] = err(lambda: jv4.Model("someone/not-cached-GGUF:Q8_0"))
        print(json.dumps(out))
    """, {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hf_cache)})
    snap = lambda task: next((hf_cache / f"models--{repo_of(task).replace('/', '--')}" / "snapshots").iterdir())
    assert got["kw"] == str(snap("code") / file_of("code", "F16"))
    assert got["kw_f32"] == str(snap("code") / file_of("code", "F32"))
    assert got["colon"] == got["kw"]
    assert got["colon_lower"] == str(snap("retrieval") / file_of("retrieval", "F32"))
    kind, msg = got["missing_quant"]
    assert kind == "ModelNotFoundError" and "Q4_K_M" in msg and "F16, F32" in msg and "HF_HUB_OFFLINE" in msg
    kind, msg = got["uncached"]
    assert kind == "ModelNotFoundError"
    assert "someone/not-cached-GGUF" in msg and "not in the Hugging Face cache" in msg and "HF_HUB_OFFLINE=1" in msg


def test_a_cached_file_loads_the_same_vectors_as_its_path(hf_cache, make_gguf, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    m = jv4.Model.from_pretrained(repo_of("retrieval"), quant="F16", cache_dir=hf_cache)
    direct = jv4.Model(make_gguf(task="retrieval", dtype="F16"))
    texts = ["a cached model", "the same weights"]
    assert (m.embed(texts) == direct.embed(texts)).all()


def test_an_existing_path_is_always_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "model:Q8_0").write_bytes(b"x")
    assert parse_model_ref("owner/model:Q8_0") == Path("owner/model:Q8_0")
    assert parse_model_ref("owner/other:Q8_0") == HubRef("owner/other", "Q8_0")
    assert parse_model_ref("owner/other") == HubRef("owner/other", None)
    assert parse_model_ref("./owner/other") == Path("./owner/other")
    assert parse_model_ref("dir/file.gguf") == Path("dir/file.gguf")
    with pytest.raises(FileNotFoundError, match="no such file"):
        jv4.Model("missing-model.gguf")


@pytest.mark.parametrize("name, tag", [
    ("jina-embeddings-v4-text-retrieval-Q4_K_M.gguf", "Q4_K_M"),
    ("sub/jina-embeddings-v4-text-code-IQ1_S.gguf", "IQ1_S"),
    ("model.q8_0.gguf", "q8_0"),
    ("big-F16-00002-of-00003.gguf", "F16"),
    ("mmproj-model-f16.gguf", None),
    ("README.md", None),
])
def test_quant_tags_are_read_from_file_names(name, tag):
    assert quant_of(name) == tag


def test_online_download_through_the_hub_api_then_no_request(make_gguf, tmp_path):
    repo = repo_of("text-matching")
    files = {file_of("text-matching", q): make_gguf(task="text-matching", dtype=q).read_bytes() for q in QUANTS}
    files["README.md"] = b"# a model card\n"
    cache = tmp_path / "cache"
    code = f"""
        import json, jv4
        from jv4.hub import resolve
        def err(f):
            try:
                f()
            except Exception as e:
                return [type(e).__name__, str(e)]
        out = {{"path": str(resolve({repo!r}, "f16"))}}
        out["missing_quant"] = err(lambda: resolve({repo!r}, "Q2_K"))
        out["no_repo"] = err(lambda: resolve("nobody/nothing-GGUF", "F16"))
        print(json.dumps(out))
    """
    with HubStub({repo: files}) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_TELEMETRY": "1"}
        first = run_py(code, env)
        first_requests = list(hub.requests)
        again = run_py(f"""
            import json
            from jv4.hub import resolve
            print(json.dumps({{"path": str(resolve({repo!r}, "F16"))}}))
        """, env)
        later_requests = hub.requests[len(first_requests):]

    path = Path(first["path"])
    assert path.read_bytes() == files[file_of("text-matching", "F16")]
    assert cache in path.parents and path.is_symlink()  # a snapshot link into blobs/, as the Hub cache has
    assert ("GET", f"/api/models/{repo}/tree/main") in first_requests
    assert any(m == "GET" and p.endswith("/resolve/main/" + file_of("text-matching", "F16"))
               for m, p in first_requests)
    assert not any(file_of("text-matching", "F32") in p for _, p in first_requests)  # only the quant asked for
    kind, msg = first["missing_quant"]
    assert kind == "ValueError" and "Q2_K" in msg and "F16, F32" in msg
    kind, msg = first["no_repo"]
    assert kind == "ModelNotFoundError" and "nobody/nothing-GGUF" in msg
    assert again["path"] == first["path"]
    assert later_requests == []

    from huggingface_hub import scan_cache_dir

    (cached,) = scan_cache_dir(cache).repos
    assert cached.repo_id == repo
    assert [f.file_name for r in cached.revisions for f in r.files] == [file_of("text-matching", "F16")]
