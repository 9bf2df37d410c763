"""``jv4 convert``: the whole jina-embeddings-v4 from its Hugging Face checkpoint.

The official GGUFs are three merged single-task files without the
multi-vector projector. From the checkpoint folder (``config.json``,
``*.safetensors``, ``tokenizer.json``, ``adapters/adapter_config.json`` and
``adapters/adapter_model.safetensors``) this writes

* ``jina-embeddings-v4-base-<TYPE>.gguf``: the Qwen2.5-VL text model
  (llama.cpp architecture ``qwen2vl``), Qwen2 tokenizer, no vision tower, no
  ``lm_head``; metadata ``jina_v4.base = true``;
* ``jina-embeddings-v4-lora-<task>.gguf`` per task: llama.cpp LoRA adapters
  (``general.type = adapter``) with ``jina_v4.task`` and the task's prefixes;
* ``jina-embeddings-v4-projector.gguf``: per task, the multi-vector projector
  ``Linear(2048 -> 128)`` with that task's LoRA merged in (F32);
* ``jina-embeddings-v4-mmproj-<TYPE>.gguf``: the vision tower (Qwen2.5-VL's
  ViT and patch merger) as an mmproj that llama.cpp's clip/mtmd loads
  (projector type ``qwen2.5vl_merger``), with the image statistics and pixel
  budget of ``preprocessor_config.json``; ``vision=False`` leaves it out;
* ``jv4.json``: which file is which, read by ``jv4.Model(folder)``.

``merge=TASK`` writes instead ``jina-embeddings-v4-text-<tag>-<TYPE>.gguf``,
the base with that task's LoRA merged (the kind of file Jina publishes), next
to the projector file.

Tensors are read one at a time from the safetensors files and written as
they are converted, so memory stays near a few copies of the largest tensor. Everything is
checked before the first byte is written, and the files appear under the
output folder's name only when all of them are complete.

Needs the ``gguf`` package (``pip install 'jv4[convert]'``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from . import _core

# the GGUF keys and tensor names of the files written here, from the engine
# that reads them (csrc/engine/jina.hpp): one table for both sides
_KEYS = _core.GGUF_KEYS

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
MANIFEST = "jv4.json"
BASE_NAME = "jina-embeddings-v4-base"

# a text-model linear adapted by LoRA: HF module name -> GGUF tensor stem
_LINEARS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    **{f"{hf}.weight": f"{g}.weight" for hf, g in _LINEARS.items()},
}
# prefixes the text model's keys carry in the checkpoint's layouts (newer
# transformers nest the language model under model.language_model)
_TEXT_PREFIXES = ("model.language_model.", "language_model.model.", "language_model.", "model.")
_SKIPPED = re.compile(r"^(language_model\.)?lm_head\.")
# the vision tower's keys in both layouts (transformers 5 nests it under model.)
_VISION = re.compile(r"^(model\.)?visual\.")
MMPROJ_NAME = "jina-embeddings-v4-mmproj"
_PROJECTOR = re.compile(r"^(model\.)?multi_vector_projector\.(weight|bias)$")
_TASK_KEY = r"(retrieval|text-matching|text_matching|code)"
_ADAPTER_LINEAR = re.compile(
    r"^(?:base_model\.model\.)?(?:model\.)?(?:language_model\.)?(?:model\.)?layers\.(\d+)\."
    r"(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.lora_([AB])\.(?:default\.)?" + _TASK_KEY + r"\.weight$")
_ADAPTER_PROJECTOR = re.compile(
    r"^(?:base_model\.model\.)?(?:model\.)?multi_vector_projector\.lora_([AB])\.(?:default\.)?"
    + _TASK_KEY + r"\.weight$")


class ConversionError(ValueError):
    """The checkpoint cannot be converted; the message says what is wrong."""


# --- reading safetensors -----------------------------------------------------
# numpy has no bfloat16 and safetensors' numpy loader refuses BF16 tensors, so
# the files are read here: an 8-byte header length, a JSON header of
# {name: {dtype, shape, data_offsets}}, then the data.
_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


class _SafeTensors:
    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ConversionError(f"{path}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", head)
            size = path.stat().st_size
            if n > size - 8 or n > 100 * 2**20:
                raise ConversionError(f"{path}: not a safetensors file (header length {n})")
            try:
                header = json.loads(f.read(n))
            except ValueError as err:
                raise ConversionError(f"{path}: not a safetensors file ({err})") from None
        self.base = 8 + n
        header.pop("__metadata__", None)
        self.meta = header
        for name, m in header.items():
            if m.get("dtype") not in _ST_DTYPES:
                raise ConversionError(f"{path}: tensor {name} has dtype {m.get('dtype')!r}; "
                                      f"the converter reads {', '.join(_ST_DTYPES)}")
            begin, end = m["data_offsets"]
            count = int(np.prod(m["shape"], dtype=np.int64))
            if end - begin != count * np.dtype(_ST_DTYPES[m["dtype"]]).itemsize or self.base + end > size:
                raise ConversionError(f"{path}: tensor {name}'s data does not match its shape {m['shape']}")

    def shape(self, name: str) -> tuple:
        return tuple(self.meta[name]["shape"])

    def read(self, name: str) -> np.ndarray:
        """The tensor as float32 (a new array). Read, not memory-mapped: mapped
        pages of a 7 GB checkpoint would stay in the process as they are
        touched (RSS grew to the checkpoint's size in a v4 conversion)."""
        m = self.meta[name]
        begin, end = m["data_offsets"]
        raw = np.fromfile(self.path, dtype=np.uint8, count=end - begin, offset=self.base + begin)
        if len(raw) != end - begin:
            raise ConversionError(f"{self.path}: truncated (tensor {name})")
        if m["dtype"] == "BF16":  # the top half of a float32
            wide = raw.view(np.uint16).astype(np.uint32)
            wide <<= 16
            out = wide.view(np.float32)
        else:
            out = raw.view(_ST_DTYPES[m["dtype"]]).astype(np.float32)
        return out.reshape(m["shape"])


def _open_all(files: list) -> dict:
    where: dict = {}
    for path in files:
        st = _SafeTensors(path)
        for name in st.meta:
            if name in where:
                raise ConversionError(f"tensor {name} is in both {where[name].path.name} and {path.name}")
            where[name] = st
    return where


# --- the checkpoint ----------------------------------------------------------
@dataclass
class _Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    ctx: int
    eps: float
    rope_theta: float
    mrope: list


@dataclass
class _Adapter:
    rank: int
    scale: float
    # task -> {(layer or None for the projector, module): {"A": key, "B": key}}
    pairs: dict = field(default_factory=dict)


def _load_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ConversionError(f"{path.parent}: no {path.name} ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ConversionError(f"{path}: not valid JSON ({err})") from None


def _text_config(cfg: dict) -> dict:
    text = dict(cfg)
    text.update(cfg.get("text_config") or {})
    return text


def _shape_of(cfg: dict, path: Path) -> _Shape:
    t = _text_config(cfg)
    need = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    missing = [k for k in need if k not in t]
    if missing:
        raise ConversionError(f"{path}: config.json lacks {', '.join(missing)}")
    rope = t.get("rope_scaling") or t.get("rope_parameters") or {}
    mrope = list(rope.get("mrope_section") or [])
    return _Shape(hidden=int(t["hidden_size"]), layers=int(t["num_hidden_layers"]),
                  heads=int(t["num_attention_heads"]),
                  kv_heads=int(t.get("num_key_value_heads", t["num_attention_heads"])),
                  ffn=int(t["intermediate_size"]), vocab=int(t["vocab_size"]),
                  ctx=int(t.get("max_position_embeddings", 32768)), eps=float(t.get("rms_norm_eps", 1e-6)),
                  rope_theta=float(t.get("rope_theta", rope.get("rope_theta", 1e6))), mrope=mrope)


def _expected_shapes(s: _Shape) -> dict:
    """HF name (without prefix) -> shape, for every text-model tensor."""
    hd = s.hidden // s.heads
    kv = s.kv_heads * hd
    out = {"embed_tokens.weight": (s.vocab, s.hidden), "norm.weight": (s.hidden,)}
    per = {
        "input_layernorm.weight": (s.hidden,), "post_attention_layernorm.weight": (s.hidden,),
        "self_attn.q_proj.weight": (s.hidden, s.hidden), "self_attn.q_proj.bias": (s.hidden,),
        "self_attn.k_proj.weight": (kv, s.hidden), "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.weight": (kv, s.hidden), "self_attn.v_proj.bias": (kv,),
        "self_attn.o_proj.weight": (s.hidden, s.hidden),
        "mlp.gate_proj.weight": (s.ffn, s.hidden), "mlp.up_proj.weight": (s.ffn, s.hidden),
        "mlp.down_proj.weight": (s.hidden, s.ffn),
    }
    for i in range(s.layers):
        for k, v in per.items():
            out[f"layers.{i}.{k}"] = v
    return out


@dataclass
class _Vision:
    depth: int
    hidden: int
    ffn: int
    heads: int
    patch: int
    merge: int
    temporal: int
    window: int
    out: int
    n_wa: int
    mean: list
    std: list
    min_pixels: Optional[int]
    max_pixels: Optional[int]
    keys: dict  # short HF name -> checkpoint key


def _vision_shapes(v: _Vision) -> dict:
    h, ff, m4 = v.hidden, v.ffn, v.hidden * v.merge * v.merge
    out = {"patch_embed.proj.weight": (h, 3, v.temporal, v.patch, v.patch), "merger.ln_q.weight": (h,),
           "merger.mlp.0.weight": (m4, m4), "merger.mlp.0.bias": (m4,),
           "merger.mlp.2.weight": (v.out, m4), "merger.mlp.2.bias": (v.out,)}
    per = {"norm1.weight": (h,), "norm2.weight": (h,), "attn.qkv.weight": (3 * h, h), "attn.qkv.bias": (3 * h,),
           "attn.proj.weight": (h, h), "attn.proj.bias": (h,),
           "mlp.gate_proj.weight": (ff, h), "mlp.gate_proj.bias": (ff,),
           "mlp.up_proj.weight": (ff, h), "mlp.up_proj.bias": (ff,),
           "mlp.down_proj.weight": (h, ff), "mlp.down_proj.bias": (h,)}
    for i in range(v.depth):
        for k, shape in per.items():
            out[f"blocks.{i}.{k}"] = shape
    return out


def _pixels(pre: dict, name: str, size_key: str) -> Optional[int]:
    v = pre.get(name)
    if v is None:
        v = (pre.get("size") or {}).get(size_key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 1 or v != int(v) or v >= 2**31:
        raise ConversionError(f"preprocessor_config.json: {name} must be a positive whole number of pixels "
                              f"(got {v!r})")
    return int(v)


class _Checkpoint:
    """Everything read and checked, nothing written."""

    def __init__(self, root: Path, vision: bool = True):
        self.root = root
        if not root.is_dir():
            raise ConversionError(f"{root}: not a folder (expected a jina-embeddings-v4 checkpoint folder)")
        self.config = _load_json(root / "config.json", "the model's configuration")
        self.shape = _shape_of(self.config, root / "config.json")
        s = self.shape
        if s.hidden % s.heads or s.heads % s.kv_heads:
            raise ConversionError(f"config.json: {s.heads} heads do not divide hidden_size {s.hidden} "
                                  f"or are not a multiple of {s.kv_heads} KV heads")
        half = s.hidden // s.heads // 2
        if s.mrope and (len(s.mrope) > 4 or sum(s.mrope) > half or min(s.mrope) < 0):
            raise ConversionError(f"config.json: rope_scaling.mrope_section {s.mrope} does not fit the "
                                  f"head's {half} rotary pairs")
        # the Matryoshka widths the model was trained at: jv4 truncates to
        # jina-v4's (jv4._core.MATRYOSHKA_DIMS), so a checkpoint naming others
        # is refused rather than embedded at widths it was not trained for
        dims = self.config.get("matryoshka_dims")
        if dims is not None and (not isinstance(dims, list) or sorted(dims) != list(_core.MATRYOSHKA_DIMS)):
            raise ConversionError(f"config.json: matryoshka_dims {dims!r} differ from jina-embeddings-v4's "
                                  f"{list(_core.MATRYOSHKA_DIMS)}, the widths jv4 truncates to")
        files = sorted(p for p in root.glob("*.safetensors"))
        if not files:
            raise ConversionError(f"{root}: no *.safetensors weights")
        self.tensors = _open_all(files)
        self.want_vision = vision
        self.vision = self._read_vision() if vision else None
        self._map_text_model()
        self.tokenizer = self._read_tokenizer()
        self.adapter = self._read_adapter()

    # the base weights
    def _map_text_model(self) -> None:
        expected = _expected_shapes(self.shape)
        self.hf: dict = {}        # short HF name -> checkpoint key
        self.projector: dict = {}  # "weight"/"bias" -> key
        unknown = []
        for key in self.tensors:
            if _SKIPPED.match(key) or _VISION.match(key):
                continue
            m = _PROJECTOR.match(key)
            if m:
                self.projector[m.group(2)] = key
                continue
            for p in _TEXT_PREFIXES:
                if key.startswith(p) and key[len(p):] in expected:
                    short = key[len(p):]
                    if short in self.hf:
                        raise ConversionError(f"two checkpoint tensors for {short}: {self.hf[short]} and {key}")
                    self.hf[short] = key
                    break
            else:
                unknown.append(key)
        if unknown:
            raise ConversionError(f"{len(unknown)} checkpoint tensor(s) of unknown role (not the Qwen2.5-VL text "
                                  f"model, vision tower, lm_head or multi_vector_projector): "
                                  f"{', '.join(sorted(unknown)[:20])}")
        missing = [k for k in expected if k not in self.hf]
        if missing:
            raise ConversionError(f"the checkpoint lacks {len(missing)} text-model tensor(s): "
                                  f"{', '.join(missing[:20])}")
        bad = [f"{self.hf[k]} is {list(self.tensors[self.hf[k]].shape(self.hf[k]))}, expected {list(v)}"
               for k, v in expected.items() if self.tensors[self.hf[k]].shape(self.hf[k]) != v]
        if bad:
            raise ConversionError("wrong shape: " + "; ".join(bad[:10]))
        if set(self.projector) != {"weight", "bias"}:
            raise ConversionError("the checkpoint has no multi_vector_projector (weight and bias): "
                                  "it is needed for multi-vector output")
        w = self.tensors[self.projector["weight"]].shape(self.projector["weight"])
        b = self.tensors[self.projector["bias"]].shape(self.projector["bias"])
        if len(w) != 2 or w[1] != self.shape.hidden or b != (w[0],):
            raise ConversionError(f"wrong shape: multi_vector_projector weight {list(w)} / bias {list(b)}, "
                                  f"expected [out, {self.shape.hidden}] / [out]")
        self.projector_out = int(w[0])

    # the vision tower
    def _read_vision(self) -> "_Vision":
        keys: dict = {}
        for key in self.tensors:
            m = _VISION.match(key)
            if m:
                short = key[m.end():]
                if short in keys:
                    raise ConversionError(f"two checkpoint tensors for visual.{short}: {keys[short]} and {key}")
                keys[short] = key
        if not keys:
            raise ConversionError("the checkpoint has no vision tower (no visual.* tensors); convert the text "
                                  "model alone with vision=False (jv4 convert --no-vision)")
        vc = self.config.get("vision_config")
        if not isinstance(vc, dict):
            raise ConversionError("config.json has no vision_config (the vision tower's shape); "
                                  "or convert with vision=False (--no-vision)")
        need = ("depth", "hidden_size", "intermediate_size", "num_heads", "out_hidden_size")
        missing = [k for k in need if k not in vc]
        if missing:
            raise ConversionError(f"config.json: vision_config lacks {', '.join(missing)}; or convert the text "
                                  "model alone with vision=False (jv4 convert --no-vision)")
        pre = _load_json(self.root / "preprocessor_config.json", "the image processor's settings, needed for "
                         "the vision tower (or convert with vision=False)")
        depth = int(vc["depth"])
        full = vc.get("fullatt_block_indexes")
        if not isinstance(full, list) or not full:
            raise ConversionError("config.json: vision_config.fullatt_block_indexes must list the vision "
                                  "tower's full-attention blocks")
        n_wa = int(full[0]) + 1
        if sorted(int(x) for x in full) != [i for i in range(depth) if (i + 1) % n_wa == 0]:
            raise ConversionError(f"config.json: vision_config.fullatt_block_indexes {full} is not every "
                                  f"{n_wa}th block of {depth}, the one pattern llama.cpp's Qwen2.5-VL graph runs")
        v = _Vision(depth=depth, hidden=int(vc["hidden_size"]), ffn=int(vc["intermediate_size"]),
                    heads=int(vc["num_heads"]), patch=int(vc.get("patch_size", 14)),
                    merge=int(vc.get("spatial_merge_size", 2)), temporal=int(vc.get("temporal_patch_size", 2)),
                    window=int(vc.get("window_size", 112)), out=int(vc["out_hidden_size"]), n_wa=n_wa,
                    mean=list(pre.get("image_mean") or []), std=list(pre.get("image_std") or []),
                    min_pixels=_pixels(pre, "min_pixels", "shortest_edge"),
                    max_pixels=_pixels(pre, "max_pixels", "longest_edge"), keys=keys)
        problems = []
        if v.out != self.shape.hidden:
            problems.append(f"vision_config.out_hidden_size {v.out} is not the text model's hidden_size "
                            f"{self.shape.hidden}")
        if v.merge != 2 or v.temporal != 2:
            problems.append(f"spatial_merge_size {v.merge} / temporal_patch_size {v.temporal} (llama.cpp runs 2 / 2)")
        if v.hidden % v.heads or (v.hidden // v.heads) % 4:
            problems.append(f"{v.heads} vision heads do not split hidden_size {v.hidden} into heads of a multiple of 4")
        if v.window % (v.patch * v.merge):
            problems.append(f"window_size {v.window} is not a multiple of patch_size x merge = {v.patch * v.merge}")
        elif v.window != _core.QWEN25VL_WINDOW_SIZE:
            problems.append(f"window_size {v.window}: llama.cpp's Qwen2.5-VL graph attends in windows of "
                            f"{_core.QWEN25VL_WINDOW_SIZE} pixels whatever the file says")
        if vc.get("hidden_act", "silu") != "silu":
            problems.append(f"vision hidden_act {vc.get('hidden_act')!r} (the Qwen2.5-VL tower uses silu)")
        for k, got in (("patch_size", pre.get("patch_size")), ("merge_size", pre.get("merge_size")),
                       ("temporal_patch_size", pre.get("temporal_patch_size"))):
            exp = {"patch_size": v.patch, "merge_size": v.merge, "temporal_patch_size": v.temporal}[k]
            if got is not None and got != exp:
                problems.append(f"preprocessor_config.json {k} {got} differs from the vision tower's {exp}")
        for k, vals in (("image_mean", v.mean), ("image_std", v.std)):
            if len(vals) != 3 or not all(isinstance(x, (int, float)) and np.isfinite(x) for x in vals) or (
                    k == "image_std" and min(vals) <= 0):
                problems.append(f"preprocessor_config.json {k} must be 3 finite numbers (got {vals!r})")
        if v.min_pixels and v.max_pixels and v.min_pixels > v.max_pixels:
            problems.append(f"preprocessor_config.json min_pixels {v.min_pixels} > max_pixels {v.max_pixels}")
        if problems:
            raise ConversionError("the vision tower cannot be converted: " + "; ".join(problems))
        expected = _vision_shapes(v)
        unknown = sorted(set(keys) - set(expected))
        if unknown:
            raise ConversionError(f"{len(unknown)} vision tensor(s) of unknown role: "
                                  f"{', '.join(keys[k] for k in unknown[:20])}")
        missing = [k for k in expected if k not in keys]
        if missing:
            raise ConversionError(f"the checkpoint lacks {len(missing)} vision tensor(s): "
                                  f"{', '.join('visual.' + k for k in missing[:20])}")
        bad = [f"{keys[k]} is {list(self.tensors[keys[k]].shape(keys[k]))}, expected {list(e)}"
               for k, e in expected.items() if self.tensors[keys[k]].shape(keys[k]) != e]
        if bad:
            raise ConversionError("wrong shape: " + "; ".join(bad[:10]))
        return v

    def read_vision(self, short: str) -> np.ndarray:
        key = self.vision.keys[short]
        return self.tensors[key].read(key)

    def read(self, short: str) -> np.ndarray:
        key = self.hf[short]
        return self.tensors[key].read(key)

    def read_key(self, key: str, where: Optional[dict] = None) -> np.ndarray:
        st = (where or self.tensors)[key]
        return st.read(key)

    # the tokenizer
    def _read_tokenizer(self) -> dict:
        tok = _load_json(self.root / "tokenizer.json", "the tokenizer")
        model = tok.get("model") or {}
        if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
            raise ConversionError("tokenizer.json: expected a byte-level BPE model (Qwen2's); "
                                  f"got {model.get('type')!r}")
        n = self.shape.vocab
        tokens: list = [None] * n
        types = [1] * n  # NORMAL
        for text, i in model["vocab"].items():
            if not 0 <= i < n:
                raise ConversionError(f"tokenizer.json: token {text!r} has id {i}, outside vocab_size {n}")
            tokens[i] = text
        for added in tok.get("added_tokens") or []:
            i = int(added["id"])
            if not 0 <= i < n:
                raise ConversionError(f"tokenizer.json: added token {added['content']!r} has id {i}, "
                                      f"outside vocab_size {n}")
            tokens[i] = added["content"]
            types[i] = 3 if added.get("special") else 4  # CONTROL / USER_DEFINED
        for i in range(n):
            if tokens[i] is None:  # the embedding matrix is padded beyond the tokenizer
                tokens[i] = f"[PAD{i}]"
                types[i] = 5  # UNUSED
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
        ids = {t: i for i, t in enumerate(tokens)}
        if len(ids) != n:
            raise ConversionError("tokenizer.json: a token text appears twice")
        eos = ids.get("<|endoftext|>")
        return {"tokens": tokens, "types": types, "merges": merges, "eos": eos}

    # the adapters
    def _read_adapter(self) -> _Adapter:
        folder = self.root / "adapters"
        cfg = _load_json(folder / "adapter_config.json", "the task adapters' configuration")
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise ConversionError(f"{folder}: no adapter_model.safetensors")
        self.adapter_tensors = _open_all(files)
        r = int(cfg.get("r", 0))
        alpha = float(cfg.get("lora_alpha", r))
        if r < 1:
            raise ConversionError(f"{folder / 'adapter_config.json'}: r must be >= 1 (got {cfg.get('r')!r})")
        for k in ("rank_pattern", "alpha_pattern"):
            if cfg.get(k):
                raise ConversionError(f"{folder / 'adapter_config.json'}: per-module {k} is not supported")
        scale = alpha / np.sqrt(r) if cfg.get("use_rslora") else alpha / r
        ad = _Adapter(rank=r, scale=float(scale))
        unmatched = []
        for key in self.adapter_tensors:
            m = _ADAPTER_LINEAR.match(key)
            if m:
                layer, module, ab, task = int(m.group(1)), m.group(2), m.group(3), m.group(4)
            else:
                m = _ADAPTER_PROJECTOR.match(key)
                if not m:
                    unmatched.append(key)
                    continue
                layer, module, ab, task = None, "multi_vector_projector", m.group(1), m.group(2)
            task = task.replace("_", "-")
            slot = ad.pairs.setdefault(task, {}).setdefault((layer, module), {})
            if ab in slot:
                raise ConversionError(f"two adapter tensors for lora_{ab} of {module} (layer {layer}, "
                                      f"task {task}): {slot[ab]} and {key}")
            slot[ab] = key
        if unmatched:
            raise ConversionError(f"{len(unmatched)} adapter key(s) match no known layout "
                                  f"(<prefix>layers.N.<q/k/v/o/gate/up/down proj>.lora_A|B.[default.]<task>.weight "
                                  f"or multi_vector_projector.lora_A|B.[default.]<task>.weight): "
                                  f"{', '.join(sorted(unmatched)[:20])}")
        if not ad.pairs:
            raise ConversionError(f"{folder}: the adapter file holds no task adapter")
        s = self.shape
        problems = []
        for task, slots in ad.pairs.items():
            for (layer, module), ab in slots.items():
                where = f"{module}" + ("" if layer is None else f" of layer {layer}") + f" (task {task})"
                if set(ab) != {"A", "B"}:
                    problems.append(f"{where} has lora_{''.join(ab)} without its pair")
                    continue
                if layer is not None and layer >= s.layers:
                    problems.append(f"{where}: the model has {s.layers} layers")
                    continue
                if module == "multi_vector_projector":
                    out_dim, in_dim = self.projector_out, s.hidden
                else:
                    out_dim, in_dim = _expected_shapes(s)[f"layers.{layer}.{module}.weight"]
                a = self.adapter_tensors[ab["A"]].shape(ab["A"])
                b = self.adapter_tensors[ab["B"]].shape(ab["B"])
                if a != (r, in_dim) or b != (out_dim, r):
                    problems.append(f"{where}: lora_A {list(a)} / lora_B {list(b)}, expected "
                                    f"[{r}, {in_dim}] / [{out_dim}, {r}]")
        if problems:
            raise ConversionError("wrong adapter tensors: " + "; ".join(problems[:10]))
        return ad

    def delta(self, task: str, layer: Optional[int], module: str) -> Optional[np.ndarray]:
        """scale * B @ A of a task's adapter for one linear (float32), or None."""
        ab = self.adapter.pairs.get(task, {}).get((layer, module))
        if ab is None:
            return None
        a = self.read_key(ab["A"], self.adapter_tensors)
        b = self.read_key(ab["B"], self.adapter_tensors)
        return (self.adapter.scale * (b.astype(np.float64) @ a.astype(np.float64))).astype(np.float32)


# --- writing GGUF --------------------------------------------------------------
def _gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError("jv4 convert needs the gguf package: pip install 'jv4[convert]'") from None
    return gguf


@dataclass
class _Out:
    name: str
    shape: tuple              # numpy order
    qtype: object             # gguf.GGMLQuantizationType
    make: Callable[[], np.ndarray]  # float32 values


def _tensor_type(gguf, outtype: str, shape: tuple):
    T = gguf.GGMLQuantizationType
    if len(shape) == 1 or outtype == "f32":
        return T.F32
    if outtype == "f16":
        return T.F16
    if outtype == "bf16":
        return T.BF16
    return T.Q8_0 if shape[-1] % 32 == 0 else T.F16


def _encode(gguf, values: np.ndarray, qtype) -> np.ndarray:
    T = gguf.GGMLQuantizationType
    if qtype == T.F32:
        return np.ascontiguousarray(values, dtype=np.float32)
    if qtype == T.F16:
        return np.ascontiguousarray(values, dtype=np.float16)
    values = np.ascontiguousarray(values, dtype=np.float32)
    if values.ndim != 2 or values.size <= 1 << 22:
        return gguf.quants.quantize(values, qtype)
    # by blocks of rows: gguf's quantizers hold several float copies of what
    # they are given (the v4 embedding matrix is 1.2 GB as float32)
    rows = max(1, (1 << 22) // values.shape[1])
    first = gguf.quants.quantize(values[:rows], qtype)
    out = np.empty((values.shape[0], first.shape[1]), dtype=first.dtype)
    out[:rows] = first
    for r in range(rows, values.shape[0], rows):
        out[r:r + rows] = gguf.quants.quantize(values[r:r + rows], qtype)
    return out


def _nbytes(gguf, shape: tuple, qtype) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape, dtype=np.int64)) // block * size


def _write(gguf, path: Path, arch: str, kv: Callable, tensors: list, progress=None) -> None:
    w = gguf.GGUFWriter(str(path), arch)
    kv(w)
    for t in tensors:
        w.add_tensor_info(t.name, t.shape, np.float32, _nbytes(gguf, t.shape, t.qtype), raw_dtype=t.qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t in tensors:
        values = t.make()
        if tuple(values.shape) != tuple(t.shape):
            raise ConversionError(f"internal: {t.name} came out {values.shape}, expected {t.shape}")
        if not np.isfinite(values).all():
            raise ConversionError(f"{t.name}: the checkpoint's values are not all finite (NaN or infinity)")
        w.write_tensor_data(_encode(gguf, values, t.qtype))
        del values
        if progress is not None:
            progress(t.name)
    w.close()


def _file_type(gguf, outtype: str) -> int:
    F = gguf.LlamaFileType
    return {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0}[outtype]


def _base_tensors(gguf, ck: _Checkpoint, outtype: str, merge: Optional[str]) -> list:
    s = ck.shape
    out = []

    def add(gname: str, short: str, layer: Optional[int] = None, module: Optional[str] = None):
        shape = _expected_shapes(s)[short]

        def make():
            v = ck.read(short)
            if merge is not None and module is not None:
                d = ck.delta(merge, layer, module)
                if d is not None:
                    v += d
            return v

        out.append(_Out(gname, shape, _tensor_type(gguf, outtype, shape), make))

    add("token_embd.weight", "embed_tokens.weight")
    for i in range(s.layers):
        for hf, g in _LAYER_TENSORS.items():
            module = hf[:-len(".weight")] if hf.endswith(".weight") and hf[:-len(".weight")] in _LINEARS else None
            add(f"blk.{i}.{g}", f"layers.{i}.{hf}", i if module else None, module)
    add("output_norm.weight", "norm.weight")
    return out


def _base_kv(gguf, ck: _Checkpoint, outtype: str, name: str, base: bool, task: Optional[str]) -> Callable:
    s = ck.shape

    def kv(w):
        w.add_name(name)
        w.add_type(gguf.GGUFType.MODEL)
        w.add_context_length(s.ctx)
        w.add_embedding_length(s.hidden)
        w.add_block_count(s.layers)
        w.add_feed_forward_length(s.ffn)
        w.add_head_count(s.heads)
        w.add_head_count_kv(s.kv_heads)
        w.add_rope_freq_base(s.rope_theta)
        w.add_layer_norm_rms_eps(s.eps)
        w.add_file_type(_file_type(gguf, outtype))
        sections = (list(s.mrope) + [0, 0, 0, 0])[:4] if s.mrope else _default_sections(s)
        w.add_rope_dimension_sections(sections)
        tok = ck.tokenizer
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(tok["tokens"])
        w.add_token_types(tok["types"])
        w.add_token_merges(tok["merges"])
        if tok["eos"] is not None:
            w.add_eos_token_id(tok["eos"])
            w.add_pad_token_id(tok["eos"])
        w.add_add_bos_token(False)
        if base:
            w.add_bool(_KEYS["base"], True)
        if task is not None:
            w.add_string(_KEYS["task"], task)
        w.add_string(_KEYS["source"], "jv4 convert")
    return kv


def _default_sections(s: _Shape) -> list:
    # jina-v4's proportions [16, 24, 24] of head_dim / 2 rotary pairs
    half = (s.hidden // s.heads) // 2
    a = half * 16 // 64
    b = (half - a) // 2
    return [a, b, half - a - b, 0]


def _lora_tensors(gguf, ck: _Checkpoint, task: str, outtype: str) -> list:
    T = gguf.GGMLQuantizationType
    qtype = T.F32 if outtype == "f32" else T.F16
    out = []
    for (layer, module), ab in sorted(ck.adapter.pairs[task].items(), key=lambda kv: (kv[0][0] or -1, kv[0][1])):
        if layer is None:
            continue  # the projector's adapter is merged into the projector file
        stem = f"blk.{layer}.{_LINEARS[module]}.weight"
        for part, key in (("lora_a", ab["A"]), ("lora_b", ab["B"])):
            shape = ck.adapter_tensors[key].shape(key)
            out.append(_Out(f"{stem}.{part}", shape, qtype,
                            lambda key=key: ck.read_key(key, ck.adapter_tensors)))
    return out


def _projector_tensors(gguf, ck: _Checkpoint, tasks: list) -> list:
    T = gguf.GGMLQuantizationType
    out = []
    wk, bk = ck.projector["weight"], ck.projector["bias"]
    for task in tasks:
        def weight(task=task):
            w = ck.read_key(wk)
            d = ck.delta(task, None, "multi_vector_projector")
            return w if d is None else w + d
        out.append(_Out(_KEYS["projector_weight"].format(task=task), (ck.projector_out, ck.shape.hidden), T.F32, weight))
        out.append(_Out(_KEYS["projector_bias"].format(task=task), (ck.projector_out,), T.F32, lambda: ck.read_key(bk)))
    return out


def _mmproj_ffn_width(v: _Vision, outtype: str) -> int:
    # For q8_0 the tower's FFN is widened with zeros to whole 32-value blocks
    # (v4: 3420 -> 3424): gate/up gain zero rows and biases (silu(0) * 0 = 0),
    # down zero columns that only those zeros meet; the same function with
    # every FFN matrix in Q8_0. jv4.quantize does the same (quantize.cpp).
    return -(-v.ffn // 32) * 32 if outtype == "q8_0" else v.ffn


def _widened(values: np.ndarray, shape: tuple) -> np.ndarray:
    if values.shape == shape:
        return values
    out = np.zeros(shape, np.float32)
    out[tuple(slice(0, n) for n in values.shape)] = values
    return out


def _mmproj_tensors(gguf, ck: _Checkpoint, outtype: str) -> list:
    T = gguf.GGMLQuantizationType
    v = ck.vision
    h = v.hidden
    ffp = _mmproj_ffn_width(v, outtype)
    out = []

    def add(name: str, shape: tuple, make: Callable[[], np.ndarray], conv: bool = False):
        qtype = _tensor_type(gguf, outtype, shape)
        if conv and qtype not in (T.F32, T.F16):
            qtype = T.F16  # the patch convolution runs on F32 or F16 kernels only
        out.append(_Out(name, shape, qtype, make))

    p = v.patch
    for frame, name in ((0, "v.patch_embd.weight"), (1, "v.patch_embd.weight.1")):
        # the conv3d over two frames of a still image = two conv2d, summed
        add(name, (h, 3, p, p), lambda frame=frame: np.ascontiguousarray(
            ck.read_vision("patch_embed.proj.weight")[:, :, frame]), conv=True)
    for i in range(v.depth):
        b, g = f"blocks.{i}.", f"v.blk.{i}."
        add(g + "ln1.weight", (h,), lambda b=b: ck.read_vision(b + "norm1.weight"))
        add(g + "ln2.weight", (h,), lambda b=b: ck.read_vision(b + "norm2.weight"))
        for j, qkv in enumerate(("attn_q", "attn_k", "attn_v")):  # the fused qkv, split in thirds
            add(f"{g}{qkv}.weight", (h, h), lambda b=b, j=j: np.ascontiguousarray(
                ck.read_vision(b + "attn.qkv.weight")[j * h:(j + 1) * h]))
            add(f"{g}{qkv}.bias", (h,), lambda b=b, j=j: np.ascontiguousarray(
                ck.read_vision(b + "attn.qkv.bias")[j * h:(j + 1) * h]))
        for hf, gg in (("attn.proj", "attn_out"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
                       ("mlp.down_proj", "ffn_down")):
            for part in ("weight", "bias"):
                shape = _vision_shapes(v)[f"{b}{hf}.{part}"]
                if gg in ("ffn_gate", "ffn_up"):
                    shape = (ffp,) + shape[1:]
                elif gg == "ffn_down" and part == "weight":
                    shape = (shape[0], ffp)
                add(f"{g}{gg}.{part}", shape, lambda b=b, hf=hf, part=part, shape=shape: _widened(
                    ck.read_vision(f"{b}{hf}.{part}"), shape))
    add("v.post_ln.weight", (h,), lambda: ck.read_vision("merger.ln_q.weight"))
    for hf, gg in (("merger.mlp.0", "mm.0"), ("merger.mlp.2", "mm.2")):
        for part in ("weight", "bias"):
            add(f"{gg}.{part}", _vision_shapes(v)[f"{hf}.{part}"], lambda hf=hf, part=part: ck.read_vision(f"{hf}.{part}"))
    return out


def _mmproj_kv(gguf, ck: _Checkpoint, outtype: str) -> Callable:
    v = ck.vision

    def kv(w):
        w.add_name(MMPROJ_NAME)
        w.add_type("mmproj")
        w.add_file_type(_file_type(gguf, outtype))
        w.add_string("clip.projector_type", "qwen2.5vl_merger")
        w.add_bool("clip.has_vision_encoder", True)
        w.add_bool("clip.use_silu", True)
        w.add_uint32("clip.vision.projection_dim", v.out)
        w.add_uint32("clip.vision.image_size", 560)  # unused by this projector; llama.cpp's converter's value
        w.add_uint32("clip.vision.patch_size", v.patch)
        w.add_uint32("clip.vision.embedding_length", v.hidden)
        w.add_uint32("clip.vision.feed_forward_length", _mmproj_ffn_width(v, outtype))
        w.add_uint32("clip.vision.block_count", v.depth)
        w.add_uint32("clip.vision.attention.head_count", v.heads)
        w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)  # the tower's RMSNorm eps
        w.add_uint32("clip.vision.spatial_merge_size", v.merge)
        w.add_uint32("clip.vision.window_size", v.window)
        w.add_uint32("clip.vision.n_wa_pattern", v.n_wa)
        w.add_array("clip.vision.image_mean", [float(x) for x in v.mean])
        w.add_array("clip.vision.image_std", [float(x) for x in v.std])
        if v.min_pixels is not None:
            w.add_uint32(_KEYS["image_min_pixels"], v.min_pixels)
        if v.max_pixels is not None:
            w.add_uint32(_KEYS["image_max_pixels"], v.max_pixels)
    return kv


def convert(checkpoint: Union[str, os.PathLike], out_dir: Union[str, os.PathLike], *,
            outtype: str = "f16", merge: Optional[str] = None, vision: bool = True,
            progress: Optional[Callable[[str], None]] = None) -> dict:
    """Convert a jina-embeddings-v4 checkpoint folder into GGUF files in
    ``out_dir`` (created; it must not exist or be empty). ``outtype``: the
    base model's matrices as ``"f32"``, ``"f16"`` (default), ``"bf16"`` or
    ``"q8_0"`` (norms and biases stay F32; adapters are F32 for f32, else F16;
    projectors F32). ``merge=TASK``: one merged single-task model instead of
    base + adapters. ``vision=False``: no vision tower (text only, as
    before images). ``progress(tensor_name)`` is called after each tensor.

    Returns the manifest written to ``out_dir/jv4.json``: ``{"base" or
    "merged": file, "adapters": {task: file}, "projector": file, "mmproj":
    file, "vision": {...}, ...}``.
    Raises ``ConversionError`` (a ValueError) naming what is wrong with the
    checkpoint; nothing is left in ``out_dir`` then."""
    gguf = _gguf()
    if not isinstance(outtype, str) or outtype.lower() not in OUTTYPES:
        raise ValueError(f"outtype must be one of {', '.join(OUTTYPES)} (got {outtype!r})")
    outtype = outtype.lower()
    _core.check_task(merge, name="merge", or_none=True)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConversionError(f"{out_dir}: exists and is not an empty folder; choose a new output folder")
    if not isinstance(vision, bool):
        raise TypeError(f"vision must be True or False, got {type(vision).__name__}")
    ck = _Checkpoint(Path(checkpoint), vision=vision)
    tasks = [t for t in _core.TASKS if t in ck.adapter.pairs]
    if merge is not None and merge not in tasks:
        raise ConversionError(f"the checkpoint has no adapter for task '{merge}' (it has {', '.join(tasks)})")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        manifest: dict = {"format": 1, "outtype": outtype, "source": str(Path(checkpoint).resolve())}
        T = outtype.upper()
        if merge is None:
            base = f"{BASE_NAME}-{T}.gguf"
            _write(gguf, work / base, "qwen2vl", _base_kv(gguf, ck, outtype, BASE_NAME, True, None),
                   _base_tensors(gguf, ck, outtype, None), progress)
            manifest["base"] = base
            manifest["adapters"] = {}
            for task in tasks:
                name = f"jina-embeddings-v4-lora-{task}"

                def kv(w, task=task, name=name):
                    w.add_name(name)
                    w.add_type(gguf.GGUFType.ADAPTER)
                    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
                    # llama.cpp scales by alpha / rank: alpha = scale * rank
                    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, ck.adapter.scale * ck.adapter.rank)
                    w.add_string(_KEYS["task"], task)
                    for role in _core.ROLES:
                        w.add_string(_KEYS["prefix"].format(role=role), _core.jina_prefix(task, role))
                _write(gguf, work / f"{name}.gguf", "qwen2vl", kv, _lora_tensors(gguf, ck, task, outtype), progress)
                manifest["adapters"][task] = f"{name}.gguf"
        else:
            tag = "matching" if merge == "text-matching" else merge
            name = f"jina-embeddings-v4-text-{tag}"
            merged = f"{name}-{T}.gguf"
            _write(gguf, work / merged, "qwen2vl", _base_kv(gguf, ck, outtype, name, False, merge),
                   _base_tensors(gguf, ck, outtype, merge), progress)
            manifest["merged"] = merged
            manifest["task"] = merge
        projector = "jina-embeddings-v4-projector.gguf"

        def pkv(w):
            w.add_name("jina-embeddings-v4-projector")
            w.add_string(_KEYS["projector_tasks"], ",".join(tasks))
        _write(gguf, work / projector, "jina-v4-projector", pkv, _projector_tensors(gguf, ck, tasks), progress)
        manifest["projector"] = projector
        if ck.vision is not None:
            v = ck.vision
            mmproj = f"{MMPROJ_NAME}-{T}.gguf"
            _write(gguf, work / mmproj, "clip", _mmproj_kv(gguf, ck, outtype), _mmproj_tensors(gguf, ck, outtype),
                   progress)
            manifest["mmproj"] = mmproj
            manifest["vision"] = {"projector_type": "qwen2.5vl_merger", "depth": v.depth, "hidden_size": v.hidden,
                                  "patch_size": v.patch, "window_size": v.window,
                                  "fullatt_every": v.n_wa, "image_mean": v.mean, "image_std": v.std,
                                  "min_pixels": v.min_pixels, "max_pixels": v.max_pixels}
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


def read_manifest(folder: Union[str, os.PathLike]) -> dict:
    """The files of a folder ``convert`` wrote, as absolute paths:
    ``{"base" or "merged": path, "adapters": {task: path}, "projector": path,
    "mmproj": path (when converted with the vision tower)}``."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {MANIFEST}: not a folder written by `jv4 convert`")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    out = {k: str(folder / m[k]) for k in ("base", "merged", "projector", "mmproj") if m.get(k)}
    out["adapters"] = {t: str(folder / f) for t, f in (m.get("adapters") or {}).items()}
    return out
