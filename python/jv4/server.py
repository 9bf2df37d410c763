"""``jv4 serve``: an OpenAI-compatible embeddings server.

Starlette (the ASGI toolkit under FastAPI, without its request models: the
errors here must be OpenAI's, not pydantic's) on uvicorn, with
prometheus-client for ``/metrics``: the ``jv4[serve]`` extra.

Every request runs its ``embed`` call on a worker thread; the engine
coalesces concurrent calls of one task into shared decodes (``Model``'s
``coalesce`` and ``batch_wait_ms``), so many small requests cost little more
than one batched call. Endpoints:

- ``POST /v1/embeddings``: OpenAI's request and response shapes (``input``,
  ``model``, ``dimensions``, ``encoding_format`` float | base64, ``user``
  ignored), plus jv4's ``task``, ``role``, ``precision`` and ``multivector``.
  ``model`` may be left out (the model served; llama-server's clients send
  none), and a jina-v4 model answers to the names its users send
  (``Served.add_v4_names``).
- ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text).

Errors come in OpenAI's shape, ``{"error": {"message", "type", "param",
"code"}}``, with 400 for bad input, 401 for a missing or wrong key, 404 for a
model not served, 413 for a body over ``--max-request-bytes``, 503 while the
model loads or the server shuts down; a 500 means a bug.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

import jv4

from .hub import DEFAULT_QUANT
from .precision import PRECISIONS, quantize_embeddings

log = logging.getLogger("jv4.serve")

DEFAULT_MAX_BATCH_TEXTS = 2048        # OpenAI's own limit on inputs a request
DEFAULT_MAX_REQUEST_BYTES = 8 * 2**20
DEFAULT_MAX_CONCURRENCY = 256         # requests in the engine at once; more wait their turn
ENCODINGS = ("float", "base64")
# the engine's argument names (jv4.ArgumentError.param) as this API's fields
_API_PARAM = {"dim": "dimensions"}
SERVE_EXTRA = "jv4 serve needs the serve extra: pip install 'jv4[serve]'"


class ApiError(Exception):
    """A request refused: HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# --- what is served --------------------------------------------------------
class Served:
    """The model(s) behind the server: one ``jv4.Model`` (a GGUF file, a
    converted base + adapters folder, a Hub name), or, with no model given,
    the three official single-task models by name (``jv4.Embedder``, each
    loaded on first use). Loading runs in the background; ``ready`` says
    when the default task can be served."""

    def __init__(self, spec: Optional[str], quant: str, task: Optional[str], model_kwargs: dict):
        self.spec, self.quant, self.model_kwargs = spec, quant, model_kwargs
        self.requested_task = task
        self.embedder: Optional[jv4.Embedder] = None
        self.model: Optional[jv4.Model] = None
        self.error: Optional[BaseException] = None
        self.loaded = threading.Event()
        self.on_fail = lambda: None  # serve() stops the server when loading fails
        self.task_of_id: dict = {}  # an official repository's name serves its own task
        if spec is None:
            self.task_of_id = {jv4._core.jina_official_repo(t): t for t in jv4.TASKS}
            self.ids = ["jina-embeddings-v4", *self.task_of_id]
        else:
            name = spec.rstrip("/\\")
            self.ids = [Path(name).name if os.path.exists(name) else name]
            stem = Path(name).stem
            if os.path.isfile(name) and stem not in self.ids:
                self.ids.append(stem)
        self.created = int(time.time())

    def load(self) -> None:
        try:
            if self.spec is None:
                self.embedder = jv4.Embedder(self.quant, **self.model_kwargs)
                self.embedder.model(self.default_task)
            else:
                self.model = jv4.Model(self.spec, **self.model_kwargs)
                if self.requested_task is not None:
                    self.model.check_request(self.requested_task)  # the task against the file
                self.add_v4_names(self.model)
        except BaseException as e:  # noqa: BLE001 - reported by /health and every request
            self.error = e
            log.error("jv4 serve: cannot load %s: %s", self.spec or "the official models", e)
            self.on_fail()
        finally:
            self.loaded.set()

    def add_v4_names(self, model: jv4.Model) -> None:
        """A jina-v4 model also answers to the names its users send: the
        model's own (``jina-embeddings-v4``, and the Hugging Face repository
        ``jinaai/jina-embeddings-v4`` for a base that serves every task), and
        each official GGUF repository whose task it serves, which then
        serves that task (as with no MODEL)."""
        tasks = model.tasks
        if not tasks:
            return  # not a jina-v4 model: its file or folder name only
        names = ["jina-embeddings-v4"] + (["jinaai/jina-embeddings-v4"] if model.is_base else [])
        task_of_id = {jv4._core.jina_official_repo(t): t for t in tasks}
        self.task_of_id = {**self.task_of_id, **task_of_id}
        self.ids = self.ids + [n for n in [*names, *task_of_id] if n not in self.ids]

    @property
    def default_task(self) -> Optional[str]:
        if self.requested_task is not None:
            return self.requested_task
        if self.spec is None:
            return jv4.DEFAULT_TASK
        if self.model is not None and self.model.is_base:
            return jv4.DEFAULT_TASK  # a converted base: every task from it, the default unless asked
        return None  # the file's own

    def model_for(self, task: Optional[str]) -> jv4.Model:
        if not self.loaded.is_set():
            raise ApiError(503, "the model is still loading; retry shortly", code="model_loading",
                           kind="server_error")
        if self.error is not None:
            raise ApiError(503, f"the model failed to load: {self.error}", code="model_load_failed",
                           kind="server_error")
        if self.embedder is not None:
            return self.embedder.model(task or jv4.DEFAULT_TASK)
        assert self.model is not None
        return self.model

    def models(self) -> list:
        return self.embedder.loaded_models() if self.embedder is not None else (
            [self.model] if self.model is not None else [])

    def close(self) -> None:
        if self.embedder is not None:
            self.embedder.close()
        if self.model is not None:
            self.model.close()


# --- requests ----------------------------------------------------------------
@dataclass
class EmbeddingRequest:
    texts: list
    model: str
    task: Optional[str] = None
    role: str = "query"
    dim: Optional[int] = None
    encoding: str = "float"
    precision: str = "float32"
    multivector: bool = False
    extra: dict = field(default_factory=dict)


def parse_request(body: Any, served_ids: list, max_texts: int, default_task: Optional[str],
                  default_role: str, task_of_id: Optional[dict] = None) -> EmbeddingRequest:
    """Checks an /v1/embeddings JSON body; ApiError(400/404) naming the field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if "input" not in body:
        raise ApiError(400, "'input' is required: a string or a list of strings", param="input")
    raw = body["input"]
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list):
        if not raw:
            raise ApiError(400, "'input' must not be an empty list", param="input")
        if all(isinstance(x, int) and not isinstance(x, bool) for x in raw) or \
                all(isinstance(x, list) for x in raw):
            raise ApiError(400, "'input' as token ids is not supported by jv4 serve: send the text "
                                "(the server adds the task/role prefix and tokenizes; LangChain's "
                                "OpenAIEmbeddings sends OpenAI's token ids unless "
                                "check_embedding_ctx_length=False)", param="input")
        bad = next((i for i, x in enumerate(raw) if not isinstance(x, str)), None)
        if bad is not None:
            raise ApiError(400, f"'input' must be a string or a list of strings; item {bad} is a "
                                f"{type(raw[bad]).__name__}", param="input")
        texts = raw
    else:
        raise ApiError(400, f"'input' must be a string or a list of strings, got {type(raw).__name__}",
                       param="input")
    empty = next((i for i, t in enumerate(texts) if not t), None)
    if empty is not None:
        raise ApiError(400, f"'input' item {empty} is an empty string", param="input")
    if len(texts) > max_texts:
        raise ApiError(400, f"'input' holds {len(texts)} texts, more than this server's limit of {max_texts} "
                            f"a request (--max-batch-texts): split it", param="input")

    model = body.get("model")
    if model is None:
        model = served_ids[0]  # one model served: a request without 'model' (llama-server's clients) is for it
    if not isinstance(model, str):
        raise ApiError(400, f"'model' must be a string, one of {', '.join(served_ids)}; got {json.dumps(model)}",
                       param="model")
    if model not in served_ids:
        raise ApiError(404, f"the model '{model}' is not served here; this server serves "
                            + ", ".join(served_ids), param="model", code="model_not_found")

    def opt_str(name: str, allowed: tuple, default):
        v = body.get(name, None)
        if v is None:
            return default
        if not isinstance(v, str) or v not in allowed:
            raise ApiError(400, f"'{name}' must be one of {', '.join(allowed)}; got {json.dumps(v)}",
                           param=name, code=f"invalid_{name}")
        return v

    task = opt_str("task", tuple(jv4.TASKS), None)
    own = (task_of_id or {}).get(model)
    if own is not None and task not in (None, own):
        raise ApiError(400, f"the model '{model}' serves the task '{own}'; drop 'task' or ask for "
                            f"'jina-embeddings-v4' with task '{task}'", param="task", code="invalid_task")
    task = task or own or default_task
    role = opt_str("role", tuple(jv4.ROLES), default_role)
    encoding = opt_str("encoding_format", ENCODINGS, "float")
    precision = opt_str("precision", PRECISIONS, "float32")
    dim = body.get("dimensions")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
        raise ApiError(400, f"'dimensions' must be an integer; got {json.dumps(dim)}", param="dimensions")
    multivector = body.get("multivector", False)
    if not isinstance(multivector, bool):
        raise ApiError(400, f"'multivector' must be true or false; got {json.dumps(multivector)}",
                       param="multivector")
    if multivector and precision != "float32":
        raise ApiError(400, "'multivector' output is float32 only", param="precision")
    return EmbeddingRequest(texts, model, task, role, dim, encoding, precision, multivector)


def _encode(vec: np.ndarray, encoding: str) -> Any:
    if encoding == "base64":
        return base64.b64encode(np.ascontiguousarray(vec).astype(vec.dtype.newbyteorder("<")).tobytes()).decode()
    return vec.tolist()


def run_request(served: Served, req: EmbeddingRequest) -> dict:
    """The embedding call and the response body (on a worker thread)."""
    model = served.model_for(req.task)
    tokens = [0]

    def hook(texts_done: int, tokens_done: int, tokens_total: int) -> None:
        tokens[0] = tokens_total

    data = []
    try:
        if req.multivector:
            if req.dim is not None:
                raise ApiError(400, "'dimensions' applies to single vectors; multi-vectors are 128 wide",
                               param="dimensions")
            mv = model.embed_multivector(req.texts, req.task, req.role, progress=hook)
            for i in range(len(req.texts)):
                rows = mv[i]
                item = {"object": "embedding", "index": i, "embedding": _encode(rows, req.encoding)}
                if req.encoding == "base64":
                    item["shape"] = list(rows.shape)
                data.append(item)
        else:
            out = model.embed_float32(req.texts, req.task, req.role, req.dim, progress=hook)
            if req.precision != "float32":
                out = quantize_embeddings(out, req.precision)
            data = [{"object": "embedding", "index": i, "embedding": _encode(v, req.encoding)}
                    for i, v in enumerate(out)]
    except (ValueError, TypeError) as e:
        # the engine names the argument it refused (jv4.ArgumentError.param)
        param = getattr(e, "param", None)
        param = _API_PARAM.get(param, param)
        raise ApiError(400, str(e), param=param) from None
    return {"object": "list", "data": data, "model": req.model,
            "usage": {"prompt_tokens": tokens[0], "total_tokens": tokens[0]}}


# --- metrics -----------------------------------------------------------------
class Metrics:
    """Prometheus metrics: the server's own (requests by status, texts,
    tokens, request latency) and the engine's (jv4.Model.stats: calls, queue
    and compute time, calls per shared decode group), read at scrape time."""

    def __init__(self, served: Served):
        from prometheus_client import CollectorRegistry, Counter, Histogram
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        import prometheus_client

        prometheus_client.disable_created_metrics()  # no *_created series beside each counter
        self.registry = CollectorRegistry()
        self.requests = Counter("jv4_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.texts = Counter("jv4_texts", "texts embedded", registry=self.registry)
        self.tokens = Counter("jv4_tokens", "tokens embedded (task/role prefix included)", registry=self.registry)
        self.latency = Histogram("jv4_request_seconds", "POST /v1/embeddings latency, body read to response",
                                 registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.in_flight = 0

        metrics = self

        class Engine:
            def collect(self):
                models = served.models()
                stats = [m.stats() for m in models]
                g = GaugeMetricFamily("jv4_in_flight_requests", "requests being served now")
                g.add_metric([], metrics.in_flight)
                yield g
                for name, key, doc in (("jv4_engine_calls", "calls", "engine calls run"),
                                       ("jv4_engine_groups", "groups", "compute-thread runs (shared decode groups)"),
                                       ("jv4_engine_queue_seconds", "queue_seconds",
                                        "seconds calls waited for the compute thread (sum)"),
                                       ("jv4_engine_compute_seconds", "compute_seconds",
                                        "seconds the compute thread ran (sum)")):
                    c = CounterMetricFamily(name, doc)
                    c.add_metric([], sum(s[key] for s in stats))
                    yield c
                h = HistogramMetricFamily("jv4_engine_group_calls", "calls sharing one compute-thread run")
                if stats:
                    bounds = stats[0]["group_size_bounds"]
                    counts = [sum(s["group_sizes"][i] for s in stats) for i in range(len(bounds))]
                    cum, buckets = 0, []
                    for b, n in zip(bounds, counts):
                        cum += n
                        buckets.append(("+Inf" if b is None else str(b), cum))
                    h.add_metric([], buckets, sum_value=sum(s["calls"] for s in stats))
                yield h

        self.registry.register(Engine())

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# --- the app -------------------------------------------------------------------
@dataclass
class ServerOptions:
    api_key: Optional[str] = None
    max_batch_texts: int = DEFAULT_MAX_BATCH_TEXTS
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    role: str = "query"


def build_app(served: Served, options: ServerOptions):
    """The Starlette app serving ``served``; loading starts with the app."""
    try:
        import anyio
        from starlette.applications import Starlette
        from starlette.requests import ClientDisconnect, Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route
    except ImportError as e:  # pragma: no cover - the extra's own check
        raise ImportError(SERVE_EXTRA) from e

    metrics = Metrics(served)
    limiter = anyio.CapacityLimiter(options.max_concurrency)
    state = {"closing": False}

    def error(e: ApiError, endpoint: str) -> JSONResponse:
        metrics.requests.labels(endpoint, str(e.status)).inc()
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    def check_key(request: Request) -> None:
        if options.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "no API key: send 'Authorization: Bearer KEY'", code="invalid_api_key")
        import hmac

        if not hmac.compare_digest(token.strip().encode(), options.api_key.encode()):
            raise ApiError(401, "wrong API key", code="invalid_api_key")

    async def read_body(request: Request) -> bytes:
        limit = options.max_request_bytes
        length = request.headers.get("content-length")
        too_big = ApiError(413, f"the request body is over this server's limit of {limit} bytes "
                                f"(--max-request-bytes)", code="request_too_large")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    async def embeddings(request: Request) -> Response:
        t0 = time.perf_counter()
        metrics.in_flight += 1
        try:
            if state["closing"]:
                raise ApiError(503, "the server is shutting down", kind="server_error", code="shutting_down")
            check_key(request)
            try:
                raw = await read_body(request)
            except ClientDisconnect:
                metrics.requests.labels("embeddings", "499").inc()
                return Response(status_code=499)
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ApiError(400, f"the request body is not valid JSON: {e}") from None
            req = parse_request(body, served.ids, options.max_batch_texts, served.default_task, options.role,
                                served.task_of_id)
            result = await anyio.to_thread.run_sync(run_request, served, req, limiter=limiter)
            metrics.texts.inc(len(req.texts))
            metrics.tokens.inc(result["usage"]["prompt_tokens"])
            metrics.requests.labels("embeddings", "200").inc()
            metrics.latency.observe(time.perf_counter() - t0)
            return JSONResponse(result)
        except ApiError as e:
            return error(e, "embeddings")
        except Exception as e:  # noqa: BLE001 - a bug: logged, answered in OpenAI's shape
            log.exception("jv4 serve: internal error")
            return error(ApiError(500, f"internal error: {type(e).__name__}: {e}", kind="server_error"),
                         "embeddings")
        finally:
            metrics.in_flight -= 1

    async def models(request: Request) -> Response:
        try:
            check_key(request)
        except ApiError as e:
            return error(e, "models")
        metrics.requests.labels("models", "200").inc()
        return JSONResponse({"object": "list", "data": [
            {"id": i, "object": "model", "created": served.created, "owned_by": "jv4"} for i in served.ids]})

    async def health(request: Request) -> Response:
        if served.error is not None:
            return JSONResponse({"status": "error", "error": str(served.error)}, status_code=503)
        if not served.loaded.is_set():
            return JSONResponse({"status": "loading"}, status_code=503)
        if state["closing"]:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ok", "models": served.ids})

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loader = threading.Thread(target=served.load, name="jv4-serve-load", daemon=True)
        loader.start()
        try:
            yield
        finally:
            state["closing"] = True
            await asyncio.to_thread(loader.join)
            served.close()

    app = Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"]),
                            Route("/embeddings", embeddings, methods=["POST"]),
                            Route("/v1/models", models, methods=["GET"]),
                            Route("/health", health, methods=["GET"]),
                            Route("/metrics", prometheus, methods=["GET"])],
                    lifespan=lifespan)
    app.state.served = served
    app.state.metrics = metrics
    return app


def serve(spec: Optional[str], *, host: str = "127.0.0.1", port: int = 8080, quant: str = DEFAULT_QUANT,
          task: Optional[str] = None, options: Optional[ServerOptions] = None, model_kwargs: Optional[dict] = None,
          log_level: str = "info") -> None:
    """Runs the server until SIGINT/SIGTERM (uvicorn's handlers: the listener
    closes, requests in flight finish, then the models are freed)."""
    try:
        import uvicorn
    except ImportError as e:
        raise ImportError(SERVE_EXTRA) from e
    served = Served(spec, quant, task, {"coalesce": True, **(model_kwargs or {})})
    app = build_app(served, options or ServerOptions())
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=60,
                            access_log=False)
    server = uvicorn.Server(config)

    def stop() -> None:
        server.should_exit = True

    served.on_fail = stop
    server.run()
    if served.error is not None:
        raise served.error
