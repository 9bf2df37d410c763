# Generated from the compiled module by tools/stubgen.py (pybind11-stubgen); do not edit.
# tests/test_stub.py fails when it differs from what the bindings say.
"""
jv4 native core (private; import jv4 instead)
"""
from __future__ import annotations
import collections.abc
import numpy
import numpy.typing
import typing
__all__: list[str] = ['ArgumentError', 'DEFAULT_BATCH_TOKENS', 'DEFAULT_MAX_LENGTH', 'DEFAULT_TASK', 'GGUF_KEYS', 'MATRYOSHKA_DIMS', 'MAX_IMAGE_PIXELS', 'Model', 'ModelInfo', 'ModelLoadError', 'ModelOptions', 'QWEN25VL_WINDOW_SIZE', 'ROLES', 'TASKS', 'build_info', 'check_role', 'check_task', 'decode_image', 'image_format', 'imatrix_types', 'jina_official_repo', 'jina_prefix', 'kv_cache_types', 'mmproj_quantize_types', 'quantize', 'quantize_types']
class ModelLoadError(RuntimeError):
    pass
class ArgumentError(ValueError):
    pass
class ModelOptions:
    """
    A Model's options by name; None everywhere means the documented default.
    """
    batch_invariant: bool | None
    coalesce: bool | None
    f16_as_bf16: bool | None
    flash_attn: bool | None
    kv_cache_type: str | None
    mmproj: str | None
    projector: str | None
    repack: bool | None
    def __init__(self, **kwargs) -> None:
        """
        ModelOptions(**options): each keyword sets the option of that name
        """
    @property
    def adapters(self) -> list[tuple[str | None, str]]:
        ...
    @adapters.setter
    def adapters(self, arg0: collections.abc.Sequence[tuple[str | None, str]]) -> None:
        ...
    @property
    def batch_tokens(self) -> int | None:
        ...
    @batch_tokens.setter
    def batch_tokens(self, arg0: typing.SupportsInt | typing.SupportsIndex | None) -> None:
        ...
    @property
    def batch_wait_ms(self) -> float | None:
        ...
    @batch_wait_ms.setter
    def batch_wait_ms(self, arg0: typing.SupportsFloat | typing.SupportsIndex | None) -> None:
        ...
    @property
    def image_max_tokens(self) -> int | None:
        ...
    @image_max_tokens.setter
    def image_max_tokens(self, arg0: typing.SupportsInt | typing.SupportsIndex | None) -> None:
        ...
    @property
    def image_min_tokens(self) -> int | None:
        ...
    @image_min_tokens.setter
    def image_min_tokens(self, arg0: typing.SupportsInt | typing.SupportsIndex | None) -> None:
        ...
    @property
    def main_gpu(self) -> int | None:
        ...
    @main_gpu.setter
    def main_gpu(self, arg0: typing.SupportsInt | typing.SupportsIndex | None) -> None:
        ...
    @property
    def max_length(self) -> int | None:
        ...
    @max_length.setter
    def max_length(self, arg0: typing.SupportsInt | typing.SupportsIndex | None) -> None:
        ...
    @property
    def n_gpu_layers(self) -> int | None:
        ...
    @n_gpu_layers.setter
    def n_gpu_layers(self, arg0: typing.SupportsInt | typing.SupportsIndex | None) -> None:
        ...
    @property
    def n_threads(self) -> int | None:
        ...
    @n_threads.setter
    def n_threads(self, arg0: typing.SupportsInt | typing.SupportsIndex | None) -> None:
        ...
class ModelInfo:
    """
    What a loaded model is and how it was loaded (Model.info).
    """
    @property
    def adapters(self) -> list[str]:
        ...
    @property
    def architecture(self) -> str:
        ...
    @property
    def base(self) -> bool:
        ...
    @property
    def basename(self) -> str:
        ...
    @property
    def batch_invariant(self) -> bool:
        ...
    @property
    def batch_tokens(self) -> int:
        ...
    @property
    def batch_wait_ms(self) -> float:
        ...
    @property
    def causal(self) -> bool:
        ...
    @property
    def coalesce(self) -> bool:
        ...
    @property
    def description(self) -> str:
        ...
    @property
    def f16_as_bf16(self) -> bool:
        ...
    @property
    def file_type(self) -> str:
        ...
    @property
    def flash_attn(self) -> str:
        ...
    @property
    def image_attention(self) -> str | None:
        ...
    @property
    def image_f16_as_bf16(self) -> bool | None:
        ...
    @property
    def image_max_tokens(self) -> int | None:
        ...
    @property
    def image_min_tokens(self) -> int | None:
        ...
    @property
    def image_repack(self) -> bool | None:
        ...
    @property
    def jina_v4(self) -> bool:
        ...
    @property
    def kv_cache_type(self) -> str:
        ...
    @property
    def load_mode(self) -> str:
        ...
    @property
    def main_gpu(self) -> int | None:
        ...
    @property
    def max_length(self) -> int:
        ...
    @property
    def mmproj(self) -> str | None:
        ...
    @property
    def n_ctx_train(self) -> int:
        ...
    @property
    def n_embd(self) -> int:
        ...
    @property
    def n_gpu_layers(self) -> int:
        ...
    @property
    def n_head(self) -> int:
        ...
    @property
    def n_layer(self) -> int:
        ...
    @property
    def n_params(self) -> int:
        ...
    @property
    def n_threads(self) -> int:
        ...
    @property
    def n_vocab(self) -> int:
        ...
    @property
    def name(self) -> str:
        ...
    @property
    def normalization(self) -> str:
        ...
    @property
    def path(self) -> str:
        ...
    @property
    def pooling(self) -> str:
        ...
    @property
    def projector(self) -> str | None:
        ...
    @property
    def repack(self) -> bool:
        ...
    @property
    def size_bytes(self) -> int:
        ...
    @property
    def task(self) -> str | None:
        ...
    @property
    def tokenizer_pre(self) -> str:
        ...
    @property
    def truncation(self) -> str:
        ...
class Model:
    def __init__(self, path: str, options: ModelOptions = ...) -> None:
        ...
    def check_request(self, task: str | None = None, role: str = 'query', dim: typing.SupportsInt | typing.SupportsIndex | None = None, multivector: bool = False, images: bool = False) -> dict:
        """
        the request policy's answer for a call with these arguments ({task, prefix, dim}), or jv4.ArgumentError (a ValueError) naming the argument in .param - as the call itself would
        """
    def embed(self, texts: typing.Any, task: str | None = None, role: str = 'query', dim: typing.SupportsInt | typing.SupportsIndex | None = None, truncate: bool = True, progress: collections.abc.Callable | None = None) -> numpy.typing.NDArray[numpy.float32]:
        ...
    def embed_images(self, images: typing.Any, task: str | None = None, dim: typing.SupportsInt | typing.SupportsIndex | None = None, multivector: bool = False, progress: collections.abc.Callable | None = None) -> tuple:
        """
        images: [("encoded", name, bytes) | ("rgb", name, uint8 HxWx3)]; returns (pooled (n, dim),) or, with multivector, (pooled, token vectors (total, width), offsets (n + 1,))
        """
    def embed_multivector(self, texts: typing.Any, task: str | None = None, role: str = 'query', dim: typing.SupportsInt | typing.SupportsIndex | None = None, truncate: bool = True, progress: collections.abc.Callable | None = None) -> tuple[numpy.typing.NDArray[numpy.float32], typing.Any, typing.Any]:
        """
        (pooled (n, dim), token vectors (total, width), offsets (n + 1,)): one call's single and per-token vectors from the same decodes
        """
    def imatrix(self, texts: typing.Any, path: str, task: str | None = None, role: str = 'passage', datasets: collections.abc.Sequence[str] = [], progress: collections.abc.Callable | None = None) -> dict:
        """
        llama.cpp's importance matrix of the texts (embed's forward pass), written to path; returns {weight: tokens seen}
        """
    def stats(self) -> dict:
        """
        what the compute thread has done since the model loaded: calls, groups (runs, a call alone or calls sharing decodes), texts, tokens, images, queue_seconds and compute_seconds (sums), group_sizes (groups by calls per group, upper bounds in group_size_bounds; None: the rest)
        """
    def tokenize(self, text: typing.Any, task: str | None = None, role: str = 'query', add_prefix: bool = True, max_length: typing.SupportsInt | typing.SupportsIndex | None = None) -> numpy.typing.NDArray[numpy.int32]:
        ...
    @property
    def adapter_tasks(self) -> list[str]:
        ...
    @property
    def batch_tokens(self) -> int:
        ...
    @property
    def dims(self) -> list[int]:
        ...
    @property
    def has_vision(self) -> bool:
        ...
    @property
    def info(self) -> ModelInfo:
        ...
    @property
    def is_base(self) -> bool:
        ...
    @property
    def is_jina_v4(self) -> bool:
        ...
    @property
    def max_length(self) -> int:
        ...
    @property
    def n_embd(self) -> int:
        ...
    @property
    def n_threads(self) -> int:
        ...
    @property
    def normalization(self) -> str | None:
        ...
    @property
    def path(self) -> str:
        ...
    @property
    def pooling(self) -> str:
        ...
    @property
    def projector_tasks(self) -> list[str]:
        ...
    @property
    def task(self) -> str | None:
        ...
class _stages:
    """
    the engine's pure stages, for tests
    """
    class SchedulerProbe:
        """
        the scheduler alone over jobs that sleep (tests)
        """
        def __init__(self, batch_tokens: typing.SupportsInt | typing.SupportsIndex, max_seqs: typing.SupportsInt | typing.SupportsIndex, coalesce: bool, batch_wait_ms: typing.SupportsFloat | typing.SupportsIndex = 0.0) -> None:
            ...
        def groups(self) -> list[list[int]]:
            """
            the ids of each group run, in order
            """
        def stats(self) -> dict:
            ...
        def submit(self, id: typing.SupportsInt | typing.SupportsIndex, text: bool = True, task: str = '', n_tokens: typing.SupportsInt | typing.SupportsIndex = 1, n_texts: typing.SupportsInt | typing.SupportsIndex = 1, work_ms: typing.SupportsFloat | typing.SupportsIndex = 0.0, cancel_after_ms: typing.SupportsFloat | typing.SupportsIndex | None = None, fail: bool = False) -> str:
            ...
    @staticmethod
    def context_policy(options: ModelOptions, n_ctx_train: typing.SupportsInt | typing.SupportsIndex, hardware_threads: typing.SupportsInt | typing.SupportsIndex) -> tuple[int, int, int]:
        """
        (max_length, batch_tokens, n_threads)
        """
    @staticmethod
    def load_policy(tensor_types: collections.abc.Sequence[str], x86: bool, avx512_vnni: bool, avx512_bf16: bool, n_gpus: typing.SupportsInt | typing.SupportsIndex, options: ModelOptions, file_type: str, tower_types: collections.abc.Sequence[str] = [], avx2: bool = False) -> dict:
        """
        the load decisions for a file holding tensors of these ggml types (and of this llama file type) on a build with these facts; tower_attention for a vision tower whose matrices have tower_types
        """
    @staticmethod
    def pick_group(queue: collections.abc.Sequence[tuple[bool, str, typing.SupportsInt | typing.SupportsIndex, typing.SupportsInt | typing.SupportsIndex]], batch_tokens: typing.SupportsInt | typing.SupportsIndex, max_seqs: typing.SupportsInt | typing.SupportsIndex, coalesce: bool = True) -> tuple[list[int], bool]:
        """
        queue: [(text call, task, n_tokens, n_texts)], oldest first -> (indices of the calls that run next, whether the oldest would wait for company)
        """
    @staticmethod
    def plan_decodes(n_tokens: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], batch_tokens: typing.SupportsInt | typing.SupportsIndex, max_seqs: typing.SupportsInt | typing.SupportsIndex) -> tuple:
        """
        (empty texts, [(clear, [(text, seq, begin, end, last)])], longest)
        """
    @staticmethod
    def plan_segmented(segments: collections.abc.Sequence[collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]], batch_tokens: typing.SupportsInt | typing.SupportsIndex) -> tuple:
        """
        segments: each sequence's segment lengths -> as plan_decodes
        """
    @staticmethod
    def pool(hidden: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], pooling: str, dim: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.float32]:
        """
        the pooled vector of one text from its tokens' hidden states
        """
    @staticmethod
    def project(hidden: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], weight: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], bias: typing.Annotated[numpy.typing.ArrayLike, numpy.float32]) -> numpy.typing.NDArray[numpy.float32]:
        """
        every token's normalise(weight @ h + bias)
        """
    @staticmethod
    def resolve_request(path: str, jina_v4: bool, base: bool, task_of_file: str, adapters: collections.abc.Sequence[str], projectors: collections.abc.Sequence[str], n_embd: typing.SupportsInt | typing.SupportsIndex, vision: bool, task: str | None, role: str, dim: typing.SupportsInt | typing.SupportsIndex | None, multivector: bool, images: bool) -> tuple[str, str, int, list[int]]:
        """
        the request policy for a model with these facts: (task, prefix, dim, allowed dims), or ArgumentError naming the argument
        """
def build_info() -> dict:
    ...
def check_role(role: typing.Any) -> None:
    """
    ValueError naming the allowed roles unless `role` is one
    """
def check_task(task: typing.Any, name: str = 'task', or_none: bool = False) -> None:
    """
    ValueError naming the allowed tasks unless `task` is one (or None, with or_none)
    """
def decode_image(data: bytes, name: str = 'image') -> numpy.typing.NDArray[numpy.uint8]:
    """
    the engine's decoding of an encoded image: height x width x 3 uint8 (alpha composited over white); ValueError naming `name` when it is not an image jv4 embeds
    """
def image_format(data: bytes) -> tuple[str, bool]:
    """
    (format, decoded by the engine): the format an encoded image's first bytes announce ('' when unknown) and whether jv4's built-in decoder reads it
    """
def imatrix_types() -> list[str]:
    ...
def jina_official_repo(task: str) -> str:
    """
    The official GGUF repository of a task.
    """
def jina_prefix(task: str, role: str) -> str:
    """
    The text put before a text of this task and role (ValueError for others).
    """
def kv_cache_types() -> list[str]:
    ...
def mmproj_quantize_types() -> list[str]:
    ...
def quantize(src: str, dst: str, type: str, n_threads: typing.SupportsInt | typing.SupportsIndex | None = None, imatrix: str | None = None) -> None:
    ...
def quantize_types() -> list[str]:
    ...
DEFAULT_BATCH_TOKENS: int = 512
DEFAULT_MAX_LENGTH: int = 32768
DEFAULT_TASK: str = 'retrieval'
GGUF_KEYS: dict = {'base': 'jina_v4.base', 'task': 'jina_v4.task', 'source': 'jina_v4.source', 'prefix': 'jina_v4.prefix.{role}', 'projector_tasks': 'jina_v4.projector.tasks', 'projector_weight': 'multi_vector.{task}.weight', 'projector_bias': 'multi_vector.{task}.bias', 'image_min_pixels': 'clip.vision.image_min_pixels', 'image_max_pixels': 'clip.vision.image_max_pixels'}
MATRYOSHKA_DIMS: tuple = (128, 256, 512, 1024, 2048)
MAX_IMAGE_PIXELS: int = 178956970
QWEN25VL_WINDOW_SIZE: int = 112
ROLES: tuple = ('query', 'passage')
TASKS: tuple = ('retrieval', 'text-matching', 'code')
__version__: str = '0.1.0'
