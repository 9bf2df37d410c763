"""Stand-ins for the Hugging Face Hub, for offline tests.

- ``write_hf_cache``: a cache laid out as huggingface_hub writes it
  (``models--owner--name/{blobs,refs,snapshots}``, snapshot files being
  relative symlinks to content-addressed blobs).
- ``HubStub``: an HTTP server on 127.0.0.1 answering the requests
  huggingface_hub makes to list a model repository
  (``GET /api/models/<repo>/tree/<rev>``) and to download a file
  (``HEAD`` / ``GET /<repo>/resolve/<rev>/<file>`` with the
  ``X-Repo-Commit`` and ``ETag`` headers it requires). It records every
  request, so a test can tell that a later resolution made none.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit


def commit_of(repo_id: str) -> str:
    return hashlib.sha1(repo_id.encode()).hexdigest()


def write_hf_cache(cache: Path, repo_id: str, files: dict, revision: str = "main") -> Path:
    """Lay `files` ({name: bytes or source Path}) out in `cache` as
    huggingface_hub would after downloading them; returns the snapshot dir."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    commit = commit_of(repo_id)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / revision).write_text(commit)
    snap = storage / "snapshots" / commit
    for name, content in files.items():
        data = content.read_bytes() if isinstance(content, Path) else content
        blob_id = hashlib.sha256(data).hexdigest()
        blob = storage / "blobs" / blob_id
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snap


class HubStub:
    def __init__(self, repos: dict) -> None:
        """repos: {repo_id: {filename: bytes}}"""
        self.repos = {r: dict(f) for r, f in repos.items()}
        self.requests: list = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                stub._serve(self, body=False)

            def do_GET(self):
                stub._serve(self, body=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "HubStub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _repo_of(self, parts: list):
        for n in (2, 1):
            repo = "/".join(parts[:n])
            if repo in self.repos:
                return repo, parts[n:]
        return None, parts

    def _serve(self, h, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append((h.command, path))
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "models"]:
            repo, rest = self._repo_of(parts[2:])
            if repo is None:
                return self._error(h, 404, "RepoNotFound", body)
            if len(rest) >= 2 and rest[0] == "tree":
                entries = [{"type": "file", "path": name, "size": len(data),
                            "oid": hashlib.sha1(data).hexdigest()}
                           for name, data in sorted(self.repos[repo].items())]
                return self._send(h, 200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, body)
            return self._error(h, 404, "EntryNotFound", body)
        repo, rest = self._repo_of(parts)
        if repo is None:
            return self._error(h, 404, "RepoNotFound", body)
        if len(rest) >= 3 and rest[0] == "resolve":
            name = "/".join(rest[2:])
            data = self.repos[repo].get(name)
            headers = {"X-Repo-Commit": commit_of(repo)}
            if data is None:
                return self._error(h, 404, "EntryNotFound", body, headers)
            headers["ETag"] = '"' + hashlib.sha256(data).hexdigest() + '"'
            headers["Content-Type"] = "application/octet-stream"
            return self._send(h, 200, data, headers, body)
        return self._error(h, 404, "EntryNotFound", body)

    @staticmethod
    def _send(h, status: int, data: bytes, headers: dict, body: bool) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _error(self, h, status: int, code: str, body: bool, headers=None) -> None:
        data = json.dumps({"error": code}).encode()
        self._send(h, status, data, {"X-Error-Code": code, "Content-Type": "application/json",
                                     **(headers or {})}, body)
