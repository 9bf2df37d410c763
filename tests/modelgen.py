"""Synthetic jina-v4-style models for tests and benchmarks.

A small random-weight Qwen2 decoder is written as a GGUF with the `gguf`
package, using the real Qwen2 tokenizer from llama.cpp's vocab-only file
(vendor/llama.cpp/models/ggml-vocab-qwen2.gguf). The same weights load into
transformers' `Qwen2Model`, which is the independent reference; a reference
tokenizer is built with the `tokenizers` package from the same vocabulary.

Both `qwen2` and `qwen2vl` (M-RoPE, text only) architectures are written.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
VOCAB_GGUF = ROOT / "vendor" / "llama.cpp" / "models" / "ggml-vocab-qwen2.gguf"

# Qwen2's pre-tokenizer split (as in its tokenizer.json)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclasses.dataclass(frozen=True)
class Shape:
    hidden: int = 256
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 512
    ctx: int = 32768
    rope_theta: float = 1e6
    eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


TINY = Shape()
# the "mini" benchmark shape and the real jina-embeddings-v4 text shape
MINI = Shape(hidden=1024, layers=8, heads=8, kv_heads=2, ffn=2816, ctx=32768)
V4 = Shape(hidden=2048, layers=36, heads=16, kv_heads=2, ffn=11008, ctx=128000)
SHAPES = {"tiny": TINY, "mini": MINI, "v4": V4}


class Vocab:
    """The Qwen2 vocabulary of llama.cpp's vocab-only GGUF."""

    def __init__(self, path: Path = VOCAB_GGUF):
        import gguf

        r = gguf.GGUFReader(str(path))

        def arr(key):
            f = r.fields[key]
            return [_field_item(f, i) for i in range(len(f.data))]

        self.tokens: list[str] = arr("tokenizer.ggml.tokens")
        self.token_type: list[int] = [int(x) for x in arr("tokenizer.ggml.token_type")]
        self.merges: list[str] = arr("tokenizer.ggml.merges")
        self.eos = int(r.fields["tokenizer.ggml.eos_token_id"].parts[-1][0])

    @property
    def size(self) -> int:
        return len(self.tokens)

    def head(self, n: int) -> "Vocab":
        """A small vocabulary for fast-loading files (the fuzzer's): the first
        `n` tokens (the 256 byte tokens and the earliest merges), the merges
        among them, and the three control tokens after them."""
        small = object.__new__(Vocab)
        keep = set(self.tokens[:n])
        controls = [i for i, ty in enumerate(self.token_type) if ty == 3]
        small.tokens = self.tokens[:n] + [self.tokens[i] for i in controls]
        small.token_type = self.token_type[:n] + [3] * len(controls)
        small.merges = [m for m in self.merges
                        if all(p in keep for p in m.split(" ", 1)) and m.replace(" ", "", 1) in keep]
        small.eos = n + controls.index(self.eos)
        return small

    # Qwen2.5-VL's added tokens after <|im_end|> (151645), as its tokenizer.json
    # numbers them; llama.cpp's vocab-only file holds [PAD] entries there
    VISION_TOKENS = ("<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
                     "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                     "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
    VISION_FIRST_ID = 151646

    def with_vision_tokens(self) -> "Vocab":
        """This vocabulary with Qwen2.5-VL's control tokens at their ids
        (<|vision_start|> 151652, <|vision_end|> 151653, <|image_pad|> 151655);
        a small one (head()) gets them appended after its own."""
        out = object.__new__(Vocab)
        out.tokens = list(self.tokens)
        out.token_type = list(self.token_type)
        out.merges = self.merges
        out.eos = self.eos
        first = self.VISION_FIRST_ID if self.size > self.VISION_FIRST_ID + len(self.VISION_TOKENS) else self.size
        for i, t in enumerate(self.VISION_TOKENS):
            if first + i == len(out.tokens):
                out.tokens.append(t)
                out.token_type.append(3)
            out.tokens[first + i] = t
            out.token_type[first + i] = 3
        return out

    def reference_tokenizer(self):
        """A `tokenizers` BPE over the same tokens and merges (byte-level,
        Qwen2 split regex), with the control tokens as special tokens."""
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

        vocab = {t: i for i, t in enumerate(self.tokens)}
        merges = [tuple(m.split(" ", 1)) for m in self.merges]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
        specials = [AddedToken(t, special=True, normalized=False)
                    for t, ty in zip(self.tokens, self.token_type) if ty == 3]
        tok.add_special_tokens(specials)
        return tok


def _field_item(field, i):
    import gguf

    part = field.parts[field.data[i]]
    if field.types[-1] == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8")
    return part.tolist()[0]


def random_weights(shape: Shape, n_vocab: int, seed: int = 0,
                   dtype=np.float32) -> dict[str, np.ndarray]:
    """HF-named weights, scaled so activations stay well-conditioned. Drawn in
    float32 and stored as `dtype` tensor by tensor (float16 keeps the full v4
    shape at 6 GB instead of 12), so the values do not depend on `dtype` beyond
    its rounding."""
    rng = np.random.default_rng(seed)
    h, f, hd = shape.hidden, shape.ffn, shape.head_dim
    kv = shape.kv_heads * hd

    def mat(out_dim, in_dim):
        return (rng.standard_normal((out_dim, in_dim), dtype=np.float32) / np.sqrt(in_dim)).astype(dtype)

    def vec(n, scale=0.02, base=0.0):
        return (base + scale * rng.standard_normal(n, dtype=np.float32)).astype(dtype)

    w = {"embed_tokens.weight": (0.5 * rng.standard_normal((n_vocab, h), dtype=np.float32)).astype(dtype)}
    for i in range(shape.layers):
        p = f"layers.{i}."
        w[p + "input_layernorm.weight"] = vec(h, 0.1, 1.0)
        w[p + "self_attn.q_proj.weight"] = mat(h, h)
        w[p + "self_attn.q_proj.bias"] = vec(h, 0.1)
        w[p + "self_attn.k_proj.weight"] = mat(kv, h)
        w[p + "self_attn.k_proj.bias"] = vec(kv, 0.1)
        w[p + "self_attn.v_proj.weight"] = mat(kv, h)
        w[p + "self_attn.v_proj.bias"] = vec(kv, 0.1)
        w[p + "self_attn.o_proj.weight"] = mat(h, h)
        w[p + "post_attention_layernorm.weight"] = vec(h, 0.1, 1.0)
        w[p + "mlp.gate_proj.weight"] = mat(f, h)
        w[p + "mlp.up_proj.weight"] = mat(f, h)
        w[p + "mlp.down_proj.weight"] = mat(h, f)
    w["norm.weight"] = vec(h, 0.1, 1.0)
    return w


_GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def write_gguf(path: Path, weights: dict[str, np.ndarray], shape: Shape, vocab: Vocab, *,
               arch: str = "qwen2", name: str = "jina-embeddings-v4-text-retrieval",
               dtype: str = "F32", pooling: int | None = None, pre: str = "qwen2") -> Path:
    """Write the weights as a GGUF of `arch` ("qwen2" or "qwen2vl").
    dtype "F32", "F16" or "BF16" for the matrices (norms and biases stay F32);
    pooling: an `<arch>.pooling_type` to record (1 mean, 2 cls, 3 last);
    pre: the tokenizer's pre-tokenizer name (llama.cpp's `tokenizer.ggml.pre`)."""
    import gguf

    path = Path(path)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(shape.ctx)
    w.add_embedding_length(shape.hidden)
    w.add_block_count(shape.layers)
    w.add_feed_forward_length(shape.ffn)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_rope_freq_base(shape.rope_theta)
    w.add_layer_norm_rms_eps(shape.eps)
    w.add_file_type({"F32": 0, "F16": 1, "BF16": 32}[dtype])
    if pooling is not None:
        w.add_pooling_type(gguf.PoolingType(pooling))
    if arch == "qwen2vl":
        # M-RoPE sections over head_dim/2 rotary pairs, jina-v4 proportions [16, 24, 24]
        half = shape.head_dim // 2
        a = half * 16 // 64
        b = (half - a) // 2
        w.add_rope_dimension_sections([a, b, half - a - b, 0])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.token_type)
    w.add_token_merges(vocab.merges)
    w.add_eos_token_id(vocab.eos)
    w.add_pad_token_id(vocab.eos)
    w.add_bos_token_id(vocab.eos)
    w.add_add_bos_token(False)

    def put(gname, arr):
        # matrices in the file's type, norms and biases always float32
        if dtype == "BF16" and arr.ndim == 2:  # gguf's rounding: to nearest even, as ggml's
            w.add_tensor(gname, gguf.quants.quantize(arr.astype(np.float32), gguf.GGMLQuantizationType.BF16),
                         raw_dtype=gguf.GGMLQuantizationType.BF16)
            return
        want = np.float16 if dtype == "F16" and arr.ndim == 2 else np.float32
        w.add_tensor(gname, arr.astype(want, copy=False))

    put("token_embd.weight", weights["embed_tokens.weight"])
    for i in range(shape.layers):
        for hf, g in _GGUF_NAMES.items():
            put(f"blk.{i}.{g}", weights[f"layers.{i}.{hf}"])
    put("output_norm.weight", weights["norm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def reference_model(weights: dict[str, np.ndarray], shape: Shape, n_vocab: int,
                    dtype: str = "float32"):
    """transformers' Qwen2Model holding the same weights (SDPA attention), built
    directly in `dtype` ("float32" or "bfloat16": the v4 shape in bf16 needs
    6 GB, not the 12 GB of a float32 model converted afterwards)."""
    import torch
    from transformers import Qwen2Config, Qwen2Model

    cfg = Qwen2Config(
        vocab_size=n_vocab, hidden_size=shape.hidden, intermediate_size=shape.ffn,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads, max_position_embeddings=shape.ctx,
        rope_theta=shape.rope_theta, rms_norm_eps=shape.eps, tie_word_embeddings=True,
        attn_implementation="sdpa", torch_dtype=dtype,
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        model = Qwen2Model(cfg)
    finally:
        torch.set_default_dtype(previous)
    state = {k: torch.from_numpy(v) for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if "rotary" not in m]
    assert not missing and not unexpected, (missing, unexpected)
    model.eval()
    return model


def reference_embed(model, ids_list: list[list[int]], dim: int | None = None,
                    pooling: str = "mean") -> np.ndarray:
    """The jina-v4 reference pooling: mean over all tokens of the last hidden
    state, L2-normalise; with `dim`, slice and L2-normalise again.
    pooling="last" takes the last token's state instead (other GGUF models)."""
    import torch

    out = []
    with torch.no_grad():
        for ids in ids_list:
            hs = model(input_ids=torch.tensor([ids], dtype=torch.long)).last_hidden_state[0]
            pooled = hs.double()[-1] if pooling == "last" else hs.double().mean(0)
            v = torch.nn.functional.normalize(pooled, dim=-1)
            if dim is not None:
                v = torch.nn.functional.normalize(v[:dim], dim=-1)
            out.append(v.numpy())
    return np.stack(out).astype(np.float32) if out else np.zeros((0, dim or 0), np.float32)
