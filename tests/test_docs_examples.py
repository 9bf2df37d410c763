"""The examples of docs/integrations.md run as written, with the test model
in place of the official file name."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from corpus import CORPUS

pytestmark = pytest.mark.source

DOC = Path(__file__).resolve().parent.parent / "docs" / "integrations.md"
OFFICIAL_FILE = "jina-embeddings-v4-text-retrieval-Q4_K_M.gguf"


def example(section: str) -> str:
    if not DOC.exists():
        pytest.skip(f"needs the source tree's docs/ ({DOC} is missing)")
    text = DOC.read_text()
    start = text.index(f"\n## {section}\n")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block, f"no python example under '## {section}'"
    return block.group(1)


@pytest.fixture()
def workdir(make_gguf, tmp_path, monkeypatch):
    shutil.copy(make_gguf(task="retrieval"), tmp_path / OFFICIAL_FILE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_encode_example(workdir, make_gguf):
    import jv4

    files = {t: make_gguf(task=t) for t in jv4.TASKS}
    code = example("`encode`, as sentence-transformers has it")
    # the example's Embedder("Q4_K_M") would fetch the official models: map them to local files
    code = code.replace('jv4.Embedder("Q4_K_M")', "jv4.Embedder(models=FILES)")
    ns = {"passages": CORPUS[:10], "snippets": CORPUS[10:14], "FILES": files}
    exec(compile(code, str(DOC), "exec"), ns)
    assert ns["p"].shape == (10, 256) and ns["p8"].dtype.name == "int8" and ns["c"].shape == (4, 256)


def test_langchain_example(workdir, capsys):
    pytest.importorskip("langchain_core", reason="the langchain extra (in the test extra)")
    code = example("LangChain").replace("dim=512", "dim=128")  # the test model is 256 wide
    exec(compile(code, str(DOC), "exec"), {})
    assert capsys.readouterr().out.strip() in ("GGUF is a binary file format for model weights.",
                                              "Paris is the capital of France.")


def test_ray_example(workdir):
    ray = pytest.importorskip("ray", reason="the ray extra (in the test extra)")
    import pyarrow as pa
    import pyarrow.parquet as pq

    (workdir / "passages").mkdir()
    pq.write_table(pa.table({"id": list(range(40)), "text": CORPUS[:40]}), workdir / "passages" / "part0.parquet")
    code = example("Ray Data").replace("dim=512", "dim=128")
    code = code.replace("ray.init()", "ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)")
    try:
        exec(compile(code, str(DOC), "exec"), {})
    finally:
        ray.shutdown()
    table = pq.read_table(workdir / "vectors")
    assert table.num_rows == 40 and set(table.column_names) == {"id", "text", "embedding"}
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 128)
