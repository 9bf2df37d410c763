"""Each fact written once: the Python facade, the command and the server read
the default task, the default quant, the engine's option defaults and the
serve extra's message from the one place that states them, and the server
reaches models through the facade only. Checked on the package's own source
(what a reader sees) and on what the command prints."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import jv4
from jv4 import _core, server
from jv4.hub import DEFAULT_QUANT

pytestmark = pytest.mark.source

PKG = Path(jv4.__file__).resolve().parent


def _constants(path: Path) -> list:
    """(line, value) of every str constant in the module that is not a docstring."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_the_default_task_and_quant_are_stated_once():
    assert jv4.DEFAULT_TASK == _core.DEFAULT_TASK == "retrieval" and jv4.DEFAULT_TASK in jv4.TASKS
    for path in sorted(PKG.glob("*.py")):
        for line, value in _constants(path):
            assert value != jv4.DEFAULT_TASK, f"{path.name}:{line} restates the default task"
            if path.name != "hub.py":
                assert value != DEFAULT_QUANT, f"{path.name}:{line} restates the default quant"


def test_the_serve_extra_message_is_written_once():
    hits = [(p.name, line) for p in sorted(PKG.glob("*.py")) for line, v in _constants(p)
            if "serve extra" in v]
    assert hits == [("server.py", hits[0][1])], hits


def test_the_server_uses_no_private_attribute_of_the_facade():
    tree = ast.parse((PKG / "server.py").read_text(encoding="utf-8"))
    private = sorted({n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                      and n.attr.startswith("_") and not n.attr.startswith("__")
                      and not (isinstance(n.value, ast.Name) and n.value.id == "jv4" and n.attr == "_core")})
    assert private == [], private


def test_the_commands_help_gives_the_defaults_in_force():
    def help_of(*cmd):
        return subprocess.run([sys.executable, "-m", "jv4", *cmd, "--help"], capture_output=True, text=True,
                              check=True, env={**os.environ, "COLUMNS": "400"}).stdout

    embed, serve = help_of("embed"), help_of("serve")
    for text in (embed, serve):
        assert f"token budget of one decode (default {_core.DEFAULT_BATCH_TOKENS})" in text
        assert f"(default: {jv4.DEFAULT_TASK}, or" in text
    assert f"(default {server.DEFAULT_MAX_BATCH_TEXTS}, OpenAI's limit)" in serve
    assert f"(default {server.DEFAULT_MAX_REQUEST_BYTES // 2**20} MiB)" in serve
    assert f"(default {server.DEFAULT_MAX_CONCURRENCY})" in serve
    assert f"(default {DEFAULT_QUANT})" in serve and f"(default {DEFAULT_QUANT})" in embed


def test_a_model_left_at_the_defaults_gets_them(make_gguf):
    info = jv4.Model(make_gguf()).info
    assert info["batch_tokens"] == _core.DEFAULT_BATCH_TOKENS
    assert info["max_length"] == min(_core.DEFAULT_MAX_LENGTH, info["n_ctx_train"])
