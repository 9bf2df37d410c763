"""jv4.Model: one GGUF embedding model (a path or a Hugging Face name)."""

from __future__ import annotations

import contextlib
import os
import unicodedata
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import numpy as np

from . import _core
from .encode import EncodeQueryDocument
from .encode import encode as st_encode
from .hub import HubRef, parse_model_ref, resolve
from .precision import check_precision, quantize_embeddings
from .progress import embed_bar

if TYPE_CHECKING:
    from .multivector import MultiVectors

ProgressFn = Callable[[int, int, int], None]
ModelSpec = Union[str, os.PathLike]

def info_dict(info: "_core.ModelInfo") -> dict:
    """The engine's typed ModelInfo as a dict, field by field in its order."""
    return {name: getattr(info, name) for name, attr in vars(type(info)).items()
            if isinstance(attr, property)}


def opt_int(name: str, value: Any, minimum: int = 1) -> Optional[int]:
    """None, or an int >= minimum (TypeError / ValueError otherwise)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum} (or None), got {value}")
    return value


def _task_arg(task: Any) -> Optional[str]:
    if task is not None and not isinstance(task, str):
        raise TypeError(f"task must be a str or None (one of {', '.join(_core.TASKS)}), "
                        f"got {type(task).__name__}")
    return task


def _role_arg(role: Any) -> str:
    if not isinstance(role, str):
        raise TypeError(f"role must be a str ('query' or 'passage'), got {type(role).__name__}")
    return role


def _adapter_pairs(adapters: Any) -> list:
    """[(task or None, path)] from a {task: path} mapping or a list of paths
    (each adapter file names its task; a given task must agree)."""
    if adapters is None:
        return []
    if isinstance(adapters, (str, os.PathLike)):
        adapters = [adapters]
    if isinstance(adapters, Mapping):
        items = list(adapters.items())
    else:
        try:
            items = [(None, p) for p in adapters]
        except TypeError:
            raise TypeError(f"adapters must be a {{task: path}} mapping or a list of paths, "
                            f"got {type(adapters).__name__}") from None
    out = []
    for task, p in items:
        if (task is not None and not isinstance(task, str)) or not isinstance(p, (str, os.PathLike)):
            raise TypeError("adapters must be a {task: path} mapping or a list of paths")
        _core.check_task(task, name="adapter task", or_none=True)
        out.append((task, os.fspath(p)))
    return out


def local_path(model: ModelSpec, *, quant: Optional[str] = None, revision: Optional[str] = None,
               cache_dir=None, token=None, force_download: bool = False) -> str:
    """A path for ``model``: itself when it is a path (or names an existing
    one), else the GGUF resolved from the Hub name ``owner/name[:quant]``."""
    ref = parse_model_ref(model)
    if isinstance(ref, HubRef):
        if quant is not None and ref.quant is not None and quant.upper() != ref.quant.upper():
            raise ValueError(f"two quants given: {ref.quant!r} in {model!r} and quant={quant!r}")
        return os.fspath(resolve(ref.repo_id, ref.quant or quant, revision=revision,
                                 cache_dir=cache_dir, token=token, force_download=force_download))
    if quant is not None or revision is not None:
        raise ValueError(f"quant= and revision= apply to Hugging Face names, not to the path {model!r}")
    return os.fspath(ref)


class Model(EncodeQueryDocument):
    """A GGUF embedding model loaded once (memory-mapped) for many ``embed`` calls.

    Parameters
    ----------
    model: a GGUF path, or a Hugging Face name ``"owner/repo-GGUF[:quant]"``
        (resolved through huggingface_hub's cache, downloaded if needed; see
        ``from_pretrained``). A string naming an existing path is a path.
    n_threads: CPU threads for the forward pass (default: all cores).
    max_length: token limit per text, prefix included (default 32768, capped by
        the model's trained context; a larger value is a ValueError).
    batch_tokens: token budget of one decode (default 512). Texts are packed
        into decodes up to this many tokens; longer texts span several.
    repack: let llama.cpp re-lay quantized weights for its CPU kernels
        (True/False; Q8_0 too where the build has AVX512-VNNI or AVX2). Default None:
        on x86, off for files holding Q4_K or Q2_K weights (faster
        unrepacked, measured); llama.cpp's default otherwise. When weights
        are repacked the file is read rather than memory-mapped, so that
        they are held once. ``info["repack"]`` and
        ``info["load_mode"]`` say what was chosen. The vision tower's
        matrices (``mmproj``) are repacked by the same option (default: on
        x86, where its F16/BF16/Q8_0 kernels are jv4's);
        ``info["image_repack"]``.
    n_gpu_layers: in a build with a GPU backend (CUDA, Metal), how many layers
        go to the GPU (default None: all; 0: none). No effect where there is
        no GPU.
    main_gpu: the GPU (0-based) that holds the whole model; default None:
        llama.cpp's split over all GPUs. A ValueError names the GPUs seen.
    adapters: for a jina-v4 base model written by ``jv4 convert``, its task
        adapters (``{task: path}`` or a list of paths; each file names its
        task). One copy of the base serves every task; ``embed(task=...)``
        picks the adapter per call. A folder ``jv4 convert`` wrote, given as
        ``model``, loads its base, adapters and projector by itself.
    projector: the multi-vector projector file (``*-projector.gguf``) for
        ``embed_multivector``; also works with a merged single-task model.
    f16_as_bf16: hold an F16 file's matrices as BF16, converted once while
        the file is read (then not memory-mapped). Default None: on where
        the build's CPU code has AVX512-BF16 and no layer goes to a GPU (there
        the BF16 kernels are the fast ones; the reference computes in bf16);
        ``False`` keeps F16. ``info["f16_as_bf16"]`` says what was chosen;
        the vision tower follows the same rule (``info["image_f16_as_bf16"]``),
        and its attention that of ``kv_cache_type``'s default: BF16 K and V
        unless the tower is full precision (``info["image_attention"]``).
    flash_attn: llama.cpp's flash attention on (True) or off (False). Default
        None: llama.cpp decides (on the CPU it turns it on). Off, attention
        holds a score matrix of batch_tokens x text length per head.
    kv_cache_type: element type of the KV cache, one of ``jv4.KV_CACHE_TYPES``.
        Default None: "bf16" where the build's CPU code has AVX512-BF16, all
        layers run on the CPU, flash_attn is not False and the weights are not
        full precision (flash attention then multiplies it with BF16 dot
        products); "f16" otherwise. ``info["kv_cache_type"]`` says which. A
        long text keeps 2 x layers x KV width x tokens of them. "f16", "bf16"
        and "f32" run llama.cpp's tiled attention ("f32" on an F16 cast: twice
        the memory, same vectors); the quantized types ("q8_0", ...) halve the
        cache or more but need flash attention and run a slower path (v4
        shape: q8_0 at 0.70 x f16's rate on 512-token texts).
        docs/benchmarks.md, "Long texts".
    mmproj: the vision tower (``jina-embeddings-v4-mmproj-*.gguf`` from
        ``jv4 convert``) for ``embed_images``; a converted folder loads its
        own. Needs the converter's base (or merged) model: the text model
        with M-RoPE positions that the image's rows go through.
    image_min_tokens / image_max_tokens: the image budget, in tokens an image
        becomes (one token per 28 x 28 pixels after resizing). An image is
        resized, keeping its aspect ratio, to fit the budget. Default None:
        the checkpoint's (``preprocessor_config.json``'s min/max pixels), else
        llama.cpp's 8..4096. Time and memory grow with it: docs/usage.md,
        "Images".
    coalesce: concurrent calls from several threads share decodes: the
        model's compute thread takes the oldest waiting call and every later
        one of the same task that fits one decode beside it (``batch_tokens``
        tokens, multi-vector calls included). Each caller gets its own rows,
        errors and Ctrl-C, but a text's vector then depends (within float
        rounding, docs/benchmarks.md "Concurrent callers") on what shared its
        decode. Default False: calls run one by one and a text's vector is
        the same bytes however many threads call. ``jv4 serve`` turns it on.
        Calls that alone need more than one decode always run alone.
    batch_wait_ms: with ``coalesce``, how long the oldest waiting call waits
        for others to share its decode (0..1000 ms). Default 0: no wait;
        calls that queued while the previous decode ran still share.

    batch_invariant: one kernel path for every batch size (llama.cpp's CPU
        reference kernels through jv4 patch 0011, K-quants through the tiled
        GEMM for every row count, patch 0012; of the repacked layouts only
        jv4's Q8_0/BF16 ones, whose one-row and several-row paths agree),
        so a text's vector is the same bytes alone, in any batch and through
        ``coalesce``. Default False; its cost is measured in
        docs/benchmarks.md, "Batch-invariant vectors". CPU only: a GPU
        backend keeps its own kernels.

    Calls are thread-safe and run without the GIL, one forward pass at a time
    per Model (shared by concurrent calls with ``coalesce``). A bad file
    raises FileNotFoundError or ModelLoadError;
    a name that cannot be resolved, jv4.ModelNotFoundError (or ValueError for
    a quant the repository does not have).
    """

    def __init__(self, model: ModelSpec, *, n_threads: Optional[int] = None,
                 max_length: Optional[int] = None, batch_tokens: Optional[int] = None,
                 repack: Optional[bool] = None, n_gpu_layers: Optional[int] = None,
                 main_gpu: Optional[int] = None,
                 adapters: Union[Mapping[str, ModelSpec], Sequence[ModelSpec], None] = None,
                 projector: Optional[ModelSpec] = None, f16_as_bf16: Optional[bool] = None,
                 flash_attn: Optional[bool] = None, kv_cache_type: Optional[str] = None,
                 mmproj: Optional[ModelSpec] = None, image_min_tokens: Optional[int] = None,
                 image_max_tokens: Optional[int] = None, coalesce: Optional[bool] = None,
                 batch_wait_ms: Optional[float] = None, batch_invariant: Optional[bool] = None) -> None:
        for name, flag in (("repack", repack), ("f16_as_bf16", f16_as_bf16), ("flash_attn", flash_attn),
                           ("coalesce", coalesce), ("batch_invariant", batch_invariant)):
            if flag is not None and not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name} must be True, False or None, got {type(flag).__name__}")
        if kv_cache_type is not None and not isinstance(kv_cache_type, str):
            raise TypeError(f"kv_cache_type must be a str or None, got {type(kv_cache_type).__name__}; "
                            f"allowed: {', '.join(_core.kv_cache_types())}")
        n_threads = opt_int("n_threads", n_threads)
        max_length = opt_int("max_length", max_length)
        batch_tokens = opt_int("batch_tokens", batch_tokens)
        n_gpu_layers = opt_int("n_gpu_layers", n_gpu_layers, minimum=0)
        main_gpu = opt_int("main_gpu", main_gpu, minimum=0)
        image_min_tokens = opt_int("image_min_tokens", image_min_tokens)
        image_max_tokens = opt_int("image_max_tokens", image_max_tokens)
        if batch_wait_ms is not None:
            if isinstance(batch_wait_ms, bool) or not isinstance(batch_wait_ms, (int, float, np.integer, np.floating)):
                raise TypeError(f"batch_wait_ms must be a number of milliseconds or None, "
                                f"got {type(batch_wait_ms).__name__}")
            batch_wait_ms = float(batch_wait_ms)
        if mmproj is not None:
            if not isinstance(mmproj, (str, os.PathLike)):
                raise TypeError(f"mmproj must be a path or None, got {type(mmproj).__name__}")
            mmproj = os.fspath(mmproj)
        path = local_path(model)
        pairs = _adapter_pairs(adapters)
        if projector is not None:
            if not isinstance(projector, (str, os.PathLike)):
                raise TypeError(f"projector must be a path or None, got {type(projector).__name__}")
            projector = os.fspath(projector)
        if os.path.isdir(path):
            # a folder `jv4 convert` wrote: its manifest names the files
            from .checkpoint import MANIFEST, read_manifest

            if not os.path.isfile(os.path.join(path, MANIFEST)):
                raise _core.ModelLoadError(f"{path}: is a directory, not a GGUF file nor a folder written by "
                                           f"`jv4 convert` (it has no {MANIFEST})")

            files = read_manifest(path)
            path = files.get("base") or files["merged"]
            if adapters is None:
                pairs = sorted(files["adapters"].items())
            if projector is None:
                projector = files.get("projector")
            if mmproj is None:
                mmproj = files.get("mmproj")
        options = _core.ModelOptions(
            n_threads=n_threads, max_length=max_length, batch_tokens=batch_tokens,
            repack=None if repack is None else bool(repack), n_gpu_layers=n_gpu_layers, main_gpu=main_gpu,
            adapters=pairs, projector=projector, f16_as_bf16=None if f16_as_bf16 is None else bool(f16_as_bf16),
            flash_attn=None if flash_attn is None else bool(flash_attn), kv_cache_type=kv_cache_type,
            mmproj=mmproj, image_min_tokens=image_min_tokens, image_max_tokens=image_max_tokens,
            coalesce=None if coalesce is None else bool(coalesce), batch_wait_ms=batch_wait_ms,
            batch_invariant=None if batch_invariant is None else bool(batch_invariant))
        self._core: Optional[_core.Model] = _core.Model(path, options)
        # the Unicode normal form the model's reference tokenizer applies first
        # ("NFC" for the Qwen2 vocabulary; None: text goes in as it is)
        self._normal_form: Optional[str] = self._core.normalization

    @classmethod
    def from_pretrained(cls, repo_id: str, quant: Optional[str] = None, *,
                        revision: Optional[str] = None, cache_dir: Union[str, os.PathLike, None] = None,
                        token: Union[str, bool, None] = None, force_download: bool = False,
                        **model_kwargs: Any) -> "Model":
        """Load the GGUF of Hugging Face repository ``repo_id`` whose file name
        carries ``quant`` (case-insensitive: ``"Q4_K_M"``, ``"q8_0"``, ``"F16"``;
        default Q4_K_M, or the repository's only GGUF). ``repo_id`` may also
        read ``"owner/name:QUANT"``.

        The cache (``HF_HOME``/``HF_HUB_CACHE`` or ``cache_dir``) is looked at
        first: a cached file loads without any request. Otherwise the file is
        downloaded by huggingface_hub (its progress bar, ``HF_TOKEN``,
        ``HF_ENDPOINT``), unless ``HF_HUB_OFFLINE=1``. ``force_download=True``
        fetches it again. Other keyword arguments go to ``Model``.
        """
        if not isinstance(repo_id, str):
            raise TypeError(f"repo_id must be a str such as 'jinaai/jina-embeddings-v4-text-retrieval-GGUF', "
                            f"got {type(repo_id).__name__}")
        ref = parse_model_ref(repo_id)
        if not isinstance(ref, HubRef) or os.path.exists(repo_id):
            raise ValueError(f"repo_id must read 'owner/name' or 'owner/name:QUANT' (got {repo_id!r}); "
                             "use jv4.Model(path) for a local file")
        path = local_path(repo_id, quant=quant, revision=revision, cache_dir=cache_dir, token=token,
                          force_download=force_download)
        return cls(path, **model_kwargs)

    # --- facts -----------------------------------------------------------
    @property
    def _m(self) -> _core.Model:
        if self._core is None:
            raise ValueError("this jv4.Model was closed")
        return self._core

    @property
    def n_embd(self) -> int:
        """Width of the full embedding."""
        return self._m.n_embd

    @property
    def task(self) -> Optional[str]:
        """The jina-v4 task this file was merged for (from its metadata or file
        name); None for other models or when it cannot be told."""
        return self._m.task

    @property
    def tasks(self) -> list:
        """The jina-v4 tasks this model serves: every loaded adapter's for a
        base model from ``jv4 convert``, the file's own task for a merged
        model, [] otherwise."""
        if self._m.is_base:
            return list(self._m.adapter_tasks)
        return [self.task] if self.task else []

    @property
    def is_base(self) -> bool:
        """Whether this is a jina-v4 base model from ``jv4 convert`` (tasks
        from its adapters) rather than a merged single-task file."""
        return self._m.is_base

    @property
    def multivector_tasks(self) -> list:
        """Tasks with a multi-vector projector loaded (``embed_multivector``)."""
        return [t for t in self._m.projector_tasks if not self._m.is_base or t in self._m.adapter_tasks]

    @property
    def dims(self) -> list:
        """Allowed ``dim`` values: the trained Matryoshka dims up to the width
        for jina-v4 models, any of 1..n_embd for other models."""
        return self._m.dims

    @property
    def max_length(self) -> int:
        return self._m.max_length

    @property
    def path(self) -> str:
        """The GGUF file loaded."""
        return self._m.path

    @property
    def info(self) -> dict:
        """Facts read from the GGUF (architecture, name, sizes, file_type,
        pooling...) and how it was loaded (each option as it came out:
        n_threads, repack, load_mode, kv_cache_type...)."""
        return info_dict(self._m.info)

    def stats(self) -> dict:
        """What the model has run since it loaded: ``calls`` (embed, image and
        calibration calls), ``groups`` (runs of its compute thread: a call
        alone, or concurrent calls sharing decodes, see ``coalesce``),
        ``texts``, ``tokens``, ``images``, ``queue_seconds`` and
        ``compute_seconds`` (sums over calls and groups), and ``group_sizes``:
        how many groups held up to 1, 2, 4, ... 128 calls and more
        (``group_size_bounds``, the last None). Counters only grow."""
        return self._m.stats()

    def close(self) -> None:
        """Free the model's memory now (a call running in another thread
        finishes first); later calls raise ValueError."""
        self._core = None

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._core is None:
            return "jv4.Model(<closed>)"
        return (f"jv4.Model({self._core.path!r}, task={self.task!r}, n_embd={self.n_embd}, "
                f"pooling={self._core.pooling!r})")

    def check_request(self, task: Optional[str] = None, role: str = "query", dim: Optional[int] = None, *,
                      multivector: bool = False, images: bool = False) -> dict:
        """What a call with these arguments would run, without running it:
        ``{"task", "prefix", "dim"}`` (the task the call resolves to, None for
        models without tasks; the text put in front; the output width). A
        refused argument raises ``jv4.ArgumentError`` (a ValueError) whose
        ``param`` names it (``"task"``, ``"role"``, ``"dim"``,
        ``"multivector"``, ``"images"``), with the message the call itself
        would raise. ``images=True`` checks an ``embed_images`` call."""
        return self._m.check_request(_task_arg(task), _role_arg(role), opt_int("dim", dim), bool(multivector),
                                     bool(images))

    # --- work --------------------------------------------------------------
    def embed(self, texts: Union[str, Sequence[str]], task: Optional[str] = None,
              role: str = "query", dim: Optional[int] = None, *, truncate: bool = True,
              precision: str = "float32", ranges: Optional[np.ndarray] = None,
              calibration_embeddings: Optional[np.ndarray] = None,
              show_progress: bool = False) -> np.ndarray:
        """Embed ``texts`` into L2-normalised vectors.

        A list of n strings gives a C-contiguous ``(n, dim)`` array (``(0, dim)``
        for an empty list); a single string gives ``(dim,)``.

        ``task`` (``"retrieval"``, ``"text-matching"``, ``"code"``; default: the
        file's task) and ``role`` (``"query"`` or ``"passage"``) choose the
        jina-v4 prefix (``Query: `` / ``Passage: ``). ``dim`` truncates to a
        Matryoshka width (see ``dims``) and normalises again. Texts over
        ``max_length`` tokens are cut on the right, or raise ValueError with
        ``truncate=False``. For non-jina models no prefix is added, ``task``
        must stay None and ``role`` "query".

        ``precision``: ``"float32"`` (default), ``"float16"``, ``"int8"``,
        ``"uint8"``, ``"binary"``, ``"ubinary"`` (sentence-transformers'
        ``quantize_embeddings`` meanings; see ``jv4.precision``). The int
        kinds take their per-dimension ranges from ``ranges=`` or
        ``calibration_embeddings=``, else from this call's own vectors.

        ``show_progress``: a tqdm bar (texts, and tokens/s) on stderr,
        advanced as the engine's decodes finish.
        """
        return run_embed(lambda hook: self.embed_float32(texts, task, role, dim, truncate=truncate,
                                                         progress=hook),
                         texts, precision, ranges, calibration_embeddings, show_progress)

    def embed_float32(self, texts: Union[str, Sequence[str]], task: Optional[str] = None,
                      role: str = "query", dim: Optional[int] = None, *, truncate: bool = True,
                      progress: Optional[ProgressFn] = None) -> np.ndarray:
        """``embed`` with float32 output and a raw progress hook:
        ``progress(texts_done, tokens_done, tokens_total)`` is called from the
        calling thread while the engine works (at most every 50 ms) and once at
        the end."""
        return self._m.embed(self._normalize(texts), _task_arg(task), _role_arg(role), opt_int("dim", dim),
                             bool(truncate), progress)

    def imatrix(self, texts: Sequence[str], path: Union[str, os.PathLike], task: Optional[str] = None,
                role: str = "passage", *, show_progress: bool = False) -> dict:
        """Compute llama.cpp's importance matrix over calibration ``texts``
        (run through ``embed``'s own forward pass, task/role prefix included)
        and write it to ``path`` in llama.cpp's GGUF imatrix format, for
        ``jv4.quantize(..., imatrix=path)`` (or llama.cpp's llama-quantize).
        Slower than ``embed``: the forward pass stops at every weight product
        to read its input. Returns ``{weight name: tokens seen}``."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of calibration texts, not one str")
        items = list(texts)
        with embed_bar(len(items), enabled=bool(show_progress)) as hook:
            return self._m.imatrix(self._normalize(items), os.fspath(path), _task_arg(task), _role_arg(role),
                                   [f"jv4: {len(items)} texts"], hook)

    def embed_multivector(self, texts: Union[str, Sequence[str]], task: Optional[str] = None,
                          role: str = "query", dim: Optional[int] = None, *, truncate: bool = True,
                          show_progress: bool = False, progress: Optional[ProgressFn] = None) -> "MultiVectors":
        """jina-v4 multi-vector (late interaction) output: for every text, one
        L2-normalised 128-wide vector per token (the task/role prefix's tokens
        included), the multi-vector projector applied to the model's last
        hidden states. Needs the projector file ``jv4 convert`` writes (loaded
        with the converted folder, or ``projector=``).

        Returns a ``jv4.MultiVectors``: ``result[i]`` is text i's
        ``(n_tokens_i, 128)`` float32 array (a view into one flat array,
        ``result.data``, with ``result.offsets``), and ``result.pooled`` the
        texts' single vectors (``dim`` wide) from the same forward pass.
        Score with ``jv4.maxsim``. ``progress``: a raw hook as for
        ``embed_float32`` (instead of ``show_progress``'s bar)."""
        from .multivector import MultiVectors

        single = isinstance(texts, str)
        items = [texts] if single else texts

        hooked = contextlib.nullcontext(progress) if progress is not None else \
            embed_bar(1 if single else _len_or_none(items), enabled=bool(show_progress))
        with hooked as hook:
            pooled, data, offsets = self._m.embed_multivector(self._normalize(items), _task_arg(task),
                                                              _role_arg(role), opt_int("dim", dim),
                                                              bool(truncate), hook)
        return MultiVectors(data, offsets, pooled)

    @property
    def has_vision(self) -> bool:
        """Whether a vision tower is loaded (``embed_images`` works)."""
        return self._m.has_vision

    def embed_images(self, images: Any, task: Optional[str] = None, dim: Optional[int] = None, *,
                     precision: str = "float32", ranges: Optional[np.ndarray] = None,
                     calibration_embeddings: Optional[np.ndarray] = None,
                     show_progress: bool = False) -> np.ndarray:
        """Embed images (document pages, screenshots, photos) into the same
        space as ``embed``'s texts of the same task: ``embed(query,
        task=t) @ embed_images(pages, task=t).T`` is the retrieval score.

        An image is a path, the bytes of an image file, a PIL image or a
        ``height x width x 3`` uint8 numpy array (``jv4.images``). One image
        gives ``(dim,)``; a sequence of n gives ``(n, dim)``. Each image is
        resized within the model's image budget (``image_min_tokens`` /
        ``image_max_tokens``) and run through the vision tower and the text
        model in jina-v4's image prompt; its vector is the mean of the last
        hidden states over the image's span (<|vision_start|> .. <|vision_end|>),
        L2-normalised, cut to ``dim`` and normalised again, as the reference
        model does. ``task`` picks the adapter (images take no role prefix).
        ``precision``, ``ranges``, ``calibration_embeddings`` and
        ``show_progress`` (counted in images) as for ``embed``.

        A file that does not decode, an empty image, one over
        ``jv4._core.MAX_IMAGE_PIXELS`` pixels or with an aspect ratio over
        200 raises ValueError naming it; a model loaded without ``mmproj``
        raises ValueError."""
        from .images import prepare_images

        items, single = prepare_images(images)
        task, dim = _task_arg(task), opt_int("dim", dim)

        def run(hook):
            (out,) = self._m.embed_images(items, task, dim, False, hook)
            return out[0] if single else out

        check_precision(precision)
        with embed_bar(len(items), enabled=bool(show_progress), unit="image") as hook:
            out = run(hook)
        if precision == "float32":
            return out
        return quantize_embeddings(out, precision, ranges=ranges, calibration_embeddings=calibration_embeddings)

    def embed_images_multivector(self, images: Any, task: Optional[str] = None, dim: Optional[int] = None, *,
                                 show_progress: bool = False) -> "MultiVectors":
        """jina-v4 multi-vector output for images: one L2-normalised 128-wide
        vector per token of each image's prompt (its text tokens, markers and
        image tokens, as the reference returns them), with ``pooled`` the
        images' single vectors from the same forward pass. Score text queries
        against pages with ``jv4.maxsim(model.embed_multivector(q), pages)``.
        Needs the projector file and the vision tower (a converted folder has
        both); arguments as ``embed_images``."""
        from .images import prepare_images
        from .multivector import MultiVectors

        items, _single = prepare_images(images)
        with embed_bar(len(items), enabled=bool(show_progress), unit="image") as hook:
            pooled, data, offsets = self._m.embed_images(items, _task_arg(task), opt_int("dim", dim), True, hook)
        return MultiVectors(data, offsets, pooled)

    def encode(self, inputs: Any = None, prompt_name: Optional[str] = None, prompt: Optional[str] = None,
               batch_size: int = 32, show_progress_bar: Optional[bool] = None, *, task: Optional[str] = None,
               **kwargs: Any) -> Any:
        """sentence-transformers' ``SentenceTransformer.encode``, argument for
        argument (``truncate_dim``, ``normalize_embeddings``, ``precision``,
        ``convert_to_numpy``, ``convert_to_tensor``, ``output_value`` ...);
        ``prompt_name`` is the role (``"query"`` default, ``"passage"``) and
        ``task`` the jina-v4 task (default: the file's). What each argument
        means here, and which ones are refused: ``jv4.encode``."""
        task = self.check_request(task)["task"]  # the engine's rules and messages
        return st_encode(lambda texts, role, hook: self.embed_float32(texts, task, role, progress=hook),
                         task, inputs, prompt_name, prompt, batch_size, show_progress_bar, **kwargs)

    def tokenize(self, text: str, task: Optional[str] = None, role: str = "query", *,
                 add_prefix: bool = True, max_length: Optional[int] = None) -> np.ndarray:
        """Token ids (int32) that ``embed`` feeds the model for ``text``:
        the task/role prefix plus the text, before truncation; with
        ``max_length``, only the first ``max_length`` of them (what ``embed``
        keeps), computed from a head of the text as ``embed`` does."""
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)):
            raise TypeError(f"max_length must be an int or None, got {type(max_length).__name__}")
        return self._m.tokenize(self._normalize(text), _task_arg(task), _role_arg(role), bool(add_prefix),
                                max_length)

    def _normalize(self, texts: Any) -> Any:
        """``texts`` in the model's Unicode normal form (the same object when
        every text already is: the check is a quick C scan)."""
        form = self._normal_form
        if form is None:
            return texts
        if isinstance(texts, str):
            return texts if unicodedata.is_normalized(form, texts) else unicodedata.normalize(form, texts)
        if isinstance(texts, (bytes, bytearray)):
            return texts  # the engine names the problem
        if isinstance(texts, (list, tuple)) and all(
                not isinstance(t, str) or unicodedata.is_normalized(form, t) for t in texts):
            return texts
        try:
            items = list(texts)
        except TypeError:
            return texts  # the engine names the problem
        return [unicodedata.normalize(form, t) if isinstance(t, str) else t for t in items]


def _len_or_none(texts: Any) -> Optional[int]:
    try:
        return len(texts)
    except TypeError:
        return None


def run_embed(run: Callable[[Optional[ProgressFn]], np.ndarray], texts: Any, precision: str,
              ranges: Optional[np.ndarray], calibration_embeddings: Optional[np.ndarray],
              show_progress: bool) -> np.ndarray:
    """The part of ``embed`` around the engine call ``run(progress_hook)``:
    the progress bar and the output precision."""
    check_precision(precision)
    try:
        n = 1 if isinstance(texts, str) else len(texts)
    except TypeError:
        n = None
    with embed_bar(n, enabled=bool(show_progress)) as hook:
        out = run(hook)
    if precision == "float32":
        return out
    return quantize_embeddings(out, precision, ranges=ranges, calibration_embeddings=calibration_embeddings)
