"""Benchmark corpus: real text nobody here wrote — paragraphs of the Python
standard library's own docstrings — plus fixed-length synthetic texts.

The selection is deterministic for a given Python version: modules in a fixed
order, paragraphs of 200-700 characters, the first N kept.
"""

from __future__ import annotations

import importlib
import inspect

MODULES = (
    "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "concurrent.futures",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "email.message", "enum", "fractions", "ftplib", "functools", "gettext", "glob", "gzip",
    "hashlib", "heapq", "hmac", "html.parser", "http.client", "http.server", "imaplib",
    "inspect", "io", "ipaddress", "itertools", "json", "logging", "lzma", "mailbox",
    "mimetypes", "multiprocessing", "numbers", "operator", "optparse", "os", "pathlib",
    "pickle", "pkgutil", "platform", "plistlib", "pprint", "queue", "random", "re", "sched",
    "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver",
    "sqlite3", "ssl", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "turtle", "typing",
    "unittest", "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref",
    "xml.dom.minidom", "xml.etree.ElementTree", "zipfile", "zoneinfo",
)


def _paragraphs(obj) -> list[str]:
    doc = inspect.getdoc(obj) or ""
    out = []
    for para in doc.split("\n\n"):
        text = " ".join(para.split())
        if 200 <= len(text) <= 700 and not text.startswith((">>>", "..")):
            out.append(text)
    return out


def docstring_passages(n: int = 300) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a module missing on this platform
            continue
        objs = [mod] + [getattr(mod, a) for a in sorted(vars(mod)) if not a.startswith("_")]
        for obj in objs:
            if not (inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj)):
                continue
            if getattr(obj, "__module__", name) not in (name, None) and not inspect.ismodule(obj):
                continue
            for p in _paragraphs(obj):
                if p not in seen:
                    seen.add(p)
                    out.append(p)
                    if len(out) == n:
                        return out
    return out


def fixed_length(tokenize, n_tokens: int, count: int) -> list[str]:
    """`count` texts of exactly `n_tokens` tokens (prefix included), cut from
    the docstring stream; `tokenize(text) -> list of ids` is the model's own."""
    stream = " ".join(docstring_passages(300))
    out = []
    start = 0
    for _ in range(count):
        # smallest character length reaching n_tokens, by bisection
        lo, hi = 1, min(len(stream) - start, n_tokens * 12)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(tokenize(stream[start:start + mid])) >= n_tokens:
                hi = mid
            else:
                lo = mid + 1
        text = stream[start:start + lo]
        while len(tokenize(text)) > n_tokens:  # a merge can overshoot by one
            text = text[:-1]
        out.append(text)
        start = (start + lo) % max(1, len(stream) - n_tokens * 12)
    return out
