"""Synthetic jina-embeddings-v4 checkpoints in the Hugging Face layout.

A small Qwen2.5-VL-shaped text model (random weights from modelgen), a small
but complete Qwen2.5-VL vision tower (transformers' module layout: patch
conv3d, window/full-attention blocks, patch merger) with its
preprocessor_config.json, an lm_head (which the converter must skip), the
multi-vector projector, a PEFT adapter folder holding per-task LoRA A/B pairs
for every adapted linear and the projector, config.json and tokenizer.json
(the vendored Qwen2 vocabulary, saved by the `tokenizers` package).

Two key layouts, since the real one is not verified: "nested" (newer
transformers: model.language_model.layers.N..., adapter keys without
`.default`) and "flat" (model.layers.N..., adapter keys with `.default`).

The reference for a task is transformers' Qwen2Model holding the base weights
with that task's LoRA merged by plain matrix arithmetic here (W + s * B @ A),
and the projector likewise; for images, transformers' Qwen2_5_VLModel holding
the same merged text weights and the vision tower, fed by transformers' own
Qwen2-VL image processor (ImageReference).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

import modelgen as mg

TASKS = ("retrieval", "text-matching", "code")
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


# the vision tower of the test checkpoints: Qwen2.5-VL's layout at a small size
# (4 blocks, full attention in every 2nd, 2 heads of 32; the real one: 32
# blocks, every 8th, 16 heads of 80)
VISION = {"depth": 4, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "patch_size": 14,
          "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
          "fullatt_block_indexes": [1, 3], "hidden_act": "silu", "in_channels": 3}
# the image processor's budget for the tests: 16 to 256 merged tokens
PREPROCESSOR = {"min_pixels": 16 * 28 * 28, "max_pixels": 256 * 28 * 28, "patch_size": 14, "merge_size": 2,
                "temporal_patch_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": True,
                "image_processor_type": "Qwen2VLImageProcessor"}


def vision_weights(hidden_out: int, seed: int, vision: dict = VISION) -> dict:
    """HF-named vision-tower weights (without the visual. prefix), scaled so
    activations stay well-conditioned."""
    rng = np.random.default_rng(seed)
    h, ff, p = vision["hidden_size"], vision["intermediate_size"], vision["patch_size"]
    m4 = h * 4

    def mat(o, i):
        return rng.standard_normal((o, i), dtype=np.float32) / np.sqrt(i)

    def vec(n, scale=0.02, base=0.0):
        return (base + scale * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    w = {"patch_embed.proj.weight": rng.standard_normal((h, 3, 2, p, p), dtype=np.float32) / np.sqrt(3 * 2 * p * p)}
    for i in range(vision["depth"]):
        b = f"blocks.{i}."
        w[b + "norm1.weight"] = vec(h, 0.1, 1.0)
        w[b + "norm2.weight"] = vec(h, 0.1, 1.0)
        w[b + "attn.qkv.weight"] = mat(3 * h, h)
        w[b + "attn.qkv.bias"] = vec(3 * h, 0.1)
        w[b + "attn.proj.weight"] = mat(h, h)
        w[b + "attn.proj.bias"] = vec(h, 0.1)
        w[b + "mlp.gate_proj.weight"] = mat(ff, h)
        w[b + "mlp.gate_proj.bias"] = vec(ff, 0.1)
        w[b + "mlp.up_proj.weight"] = mat(ff, h)
        w[b + "mlp.up_proj.bias"] = vec(ff, 0.1)
        w[b + "mlp.down_proj.weight"] = mat(h, ff)
        w[b + "mlp.down_proj.bias"] = vec(h, 0.1)
    w["merger.ln_q.weight"] = vec(h, 0.1, 1.0)
    w["merger.mlp.0.weight"] = mat(m4, m4)
    w["merger.mlp.0.bias"] = vec(m4, 0.1)
    w["merger.mlp.2.weight"] = mat(hidden_out, m4)
    w["merger.mlp.2.bias"] = vec(hidden_out, 0.1)
    return w


@dataclasses.dataclass
class Checkpoint:
    root: Path
    shape: mg.Shape
    n_vocab: int
    weights: dict          # HF short names -> float32 (as stored, after dtype rounding)
    projector: tuple       # (W (out, hidden), b (out,))
    lora: dict             # task -> {(layer or None, module): (A, B)}
    scale: float
    vision: dict = dataclasses.field(default_factory=dict)  # HF short names -> float32 (as stored)

    def merged_weights(self, task: str) -> dict:
        w = {k: v.astype(np.float64) for k, v in self.weights.items()}
        for (layer, module), (a, b) in self.lora[task].items():
            if layer is None:
                continue
            key = f"layers.{layer}.{module}.weight"
            w[key] = w[key] + self.scale * (b.astype(np.float64) @ a.astype(np.float64))
        return {k: v.astype(np.float32) for k, v in w.items()}

    def merged_projector(self, task: str) -> tuple:
        w, b = self.projector
        ab = self.lora[task].get((None, "multi_vector_projector"))
        if ab is not None:
            w = (w.astype(np.float64) + self.scale * (ab[1].astype(np.float64) @ ab[0].astype(np.float64)))
        return np.asarray(w, np.float32), b


def _round(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":  # round to nearest even on the top 16 bits
        u = x.astype(np.float32).view(np.uint32)
        u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
        return u.astype(np.uint32).view(np.float32)
    return x.astype(np.float32)


def _save(tensors: dict, path: Path, dtype: str) -> None:
    if dtype == "BF16":
        import torch
        from safetensors.torch import save_file

        save_file({k: torch.from_numpy(np.ascontiguousarray(v)).to(torch.bfloat16) for k, v in tensors.items()},
                  str(path))
    else:
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(path))


def write_checkpoint(root: Path, vocab: "mg.Vocab", *, shape: mg.Shape = mg.TINY, layout: str = "nested",
                     dtype: str = "F32", seed: int = 0, rank: int = 8, alpha: float = 16.0,
                     pad_vocab: int = 8, projector_out: int = 128, tasks=TASKS,
                     lora_std: float = 0.5, vision: bool = True) -> Checkpoint:
    root = Path(root)
    (root / "adapters").mkdir(parents=True, exist_ok=True)
    n_vocab = vocab.size + pad_vocab
    weights = {k: _round(v, dtype) for k, v in mg.random_weights(shape, n_vocab, seed=seed).items()}
    rng = np.random.default_rng(seed + 1000)
    h = shape.hidden
    proj_w = _round(rng.standard_normal((projector_out, h), dtype=np.float32) / np.sqrt(h), dtype)
    proj_b = _round(0.1 * rng.standard_normal(projector_out, dtype=np.float32), dtype)

    text = "model.language_model." if layout == "nested" else "model."
    base = {text + k: v for k, v in weights.items()}
    vprefix = "model.visual." if layout == "nested" else "visual."
    vweights = {k: _round(v, dtype) for k, v in vision_weights(h, seed + 2000).items()} if vision else {}
    for k, v in vweights.items():
        base[vprefix + k] = v
    base["lm_head.weight"] = weights["embed_tokens.weight"]
    base["multi_vector_projector.weight"] = proj_w
    base["multi_vector_projector.bias"] = proj_b
    names = sorted(base)
    half = len(names) // 2
    _save({k: base[k] for k in names[:half]}, root / "model-00001-of-00002.safetensors", dtype)
    _save({k: base[k] for k in names[half:]}, root / "model-00002-of-00002.safetensors", dtype)

    dims = {  # (out, in) of every adapted linear
        "self_attn.q_proj": (h, h), "self_attn.k_proj": (shape.kv_heads * shape.head_dim, h),
        "self_attn.v_proj": (shape.kv_heads * shape.head_dim, h), "self_attn.o_proj": (h, h),
        "mlp.gate_proj": (shape.ffn, h), "mlp.up_proj": (shape.ffn, h), "mlp.down_proj": (h, shape.ffn),
    }
    lora: dict = {}
    adapter_tensors = {}
    default = "" if layout == "nested" else "default."
    lm = "base_model.model.model.language_model." if layout == "nested" else "base_model.model.model."
    for task in tasks:
        lora[task] = {}
        slots = [(i, m) for i in range(shape.layers) for m in LINEARS] + [(None, "multi_vector_projector")]
        for layer, module in slots:
            out_dim, in_dim = dims[module] if layer is not None else (projector_out, h)
            a = _round(rng.standard_normal((rank, in_dim), dtype=np.float32) / np.sqrt(in_dim), dtype)
            b = _round(lora_std * rng.standard_normal((out_dim, rank), dtype=np.float32) / np.sqrt(rank), dtype)
            lora[task][(layer, module)] = (a, b)
            stem = (f"{lm}layers.{layer}.{module}" if layer is not None
                    else "base_model.model.multi_vector_projector")
            adapter_tensors[f"{stem}.lora_A.{default}{task}.weight"] = a
            adapter_tensors[f"{stem}.lora_B.{default}{task}.weight"] = b
    _save(adapter_tensors, root / "adapters" / "adapter_model.safetensors", dtype)
    (root / "adapters" / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                           "multi_vector_projector"],
        "task_names": list(tasks),
    }))

    text_cfg = {
        "hidden_size": h, "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads, "intermediate_size": shape.ffn, "vocab_size": n_vocab,
        "max_position_embeddings": shape.ctx, "rms_norm_eps": shape.eps, "rope_theta": shape.rope_theta,
        "rope_scaling": {"type": "mrope", "mrope_section": _sections(shape)},
    }
    cfg = {"architectures": ["JinaEmbeddingsV4Model"], "model_type": "qwen2_5_vl",
           "multi_vector_projector_dim": projector_out,
           "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
           "vision_end_token_id": 151653, "matryoshka_dims": [128, 256, 512, 1024, 2048]}
    if vision:
        cfg["vision_config"] = {**VISION, "out_hidden_size": h}
        (root / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    if layout == "nested":
        cfg["text_config"] = text_cfg
        cfg["vocab_size"] = n_vocab
    else:
        cfg.update(text_cfg)
    (root / "config.json").write_text(json.dumps(cfg))
    # Qwen2.5-VL's vision tokens where the vocabulary reaches their ids (a
    # small vocabulary holds them already, or lacks them on purpose)
    tok_vocab = vocab.with_vision_tokens() if vocab.size > 151656 else vocab
    tok_vocab.reference_tokenizer().save(str(root / "tokenizer.json"))
    return Checkpoint(root, shape, n_vocab, weights, (proj_w, proj_b), lora, alpha / rank, vweights)


def _sections(shape: mg.Shape) -> list:
    half = shape.head_dim // 2
    a = half * 16 // 64
    b = (half - a) // 2
    return [a, b, half - a - b]


class Reference:
    """transformers forward passes of a checkpoint with a task's LoRA merged."""

    def __init__(self, ck: Checkpoint, tokenizer):
        self.ck = ck
        self.tok = tokenizer
        self.models: dict = {}

    def model(self, task: str):
        if task not in self.models:
            self.models[task] = mg.reference_model(self.ck.merged_weights(task), self.ck.shape, self.ck.n_vocab)
        return self.models[task]

    def ids(self, text: str, prefix: str) -> list:
        return self.tok.encode(prefix + text, add_special_tokens=False).ids

    def hidden(self, task: str, text: str, prefix: str) -> np.ndarray:
        import torch

        with torch.no_grad():
            ids = torch.tensor([self.ids(text, prefix)], dtype=torch.long)
            return self.model(task)(input_ids=ids).last_hidden_state[0].double().numpy()

    def single(self, task: str, texts: list, prefix: str, dim=None) -> np.ndarray:
        out = []
        for t in texts:
            v = self.hidden(task, t, prefix).mean(0)
            v /= np.linalg.norm(v)
            if dim is not None:
                v = v[:dim] / np.linalg.norm(v[:dim])
            out.append(v)
        return np.stack(out)

    def multi(self, task: str, text: str, prefix: str) -> np.ndarray:
        w, b = self.ck.merged_projector(task)
        t = self.hidden(task, text, prefix) @ w.astype(np.float64).T + b
        return t / np.linalg.norm(t, axis=1, keepdims=True)


IMAGE_PROMPT = ("<|im_start|>user\n<|vision_start|>", "<|vision_end|>Describe the image.<|im_end|>\n")


class ImageReference:
    """transformers' Qwen2_5_VLModel (float32, SDPA) holding the checkpoint's
    vision tower and a task's merged text weights, fed by transformers' PIL
    Qwen2-VL image processor with the checkpoint's preprocessor_config.json:
    the last hidden states of the jina-v4 image prompt, pooled as the
    reference does for images (the mean over <|vision_start|> .. <|vision_end|>)."""

    def __init__(self, ck: Checkpoint, vocab: "mg.Vocab", preprocessor: dict = PREPROCESSOR):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        self.ck = ck
        self.tok = vocab.with_vision_tokens().reference_tokenizer()
        self.proc = Qwen2VLImageProcessorPil(**{k: v for k, v in preprocessor.items()
                                                if k not in ("image_processor_type",)})
        self.models: dict = {}

    def model(self, task: str):
        import torch
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

        if task in self.models:
            return self.models[task]
        s, h = self.ck.shape, self.ck.shape.hidden
        cfg = Qwen2_5_VLConfig(
            text_config={"vocab_size": self.ck.n_vocab, "hidden_size": h, "intermediate_size": s.ffn,
                         "num_hidden_layers": s.layers, "num_attention_heads": s.heads,
                         "num_key_value_heads": s.kv_heads, "max_position_embeddings": s.ctx,
                         "rms_norm_eps": s.eps,
                         "rope_parameters": {"rope_type": "default", "rope_theta": s.rope_theta,
                                             "mrope_section": _sections(s)}},
            vision_config={**VISION, "out_hidden_size": h},
            image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
            vision_end_token_id=151653, attn_implementation="sdpa")
        model = Qwen2_5_VLModel(cfg).float().eval()
        state = {"visual." + k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.ck.vision.items()}
        state.update({"language_model." + k: torch.from_numpy(v) for k, v in self.ck.merged_weights(task).items()})
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [m for m in missing if "rotary" not in m and "inv_freq" not in m]
        assert not missing and not unexpected, (missing, unexpected)
        self.models[task] = model
        return model

    def hidden(self, task: str, image) -> tuple:
        """(last hidden states (n, hidden) float64, span (first, last) inclusive)."""
        import torch

        enc = self.proc(images=[image], return_tensors="pt")
        grid = enc["image_grid_thw"]
        n = int(grid.prod()) // 4
        ids = (self.tok.encode(IMAGE_PROMPT[0], add_special_tokens=False).ids + [151655] * n
               + self.tok.encode(IMAGE_PROMPT[1], add_special_tokens=False).ids)
        ids_t = torch.tensor([ids])
        with torch.no_grad():
            # mm_token_type_ids (1: image) lets transformers compute the M-RoPE
            # positions (t, h, w) of the image tokens; without it it falls back to 1-D
            out = self.model(task)(input_ids=ids_t, pixel_values=enc["pixel_values"], image_grid_thw=grid,
                                   mm_token_type_ids=(ids_t == 151655).long())
        hs = out.last_hidden_state[0].double().numpy()
        first, last = ids.index(151652), ids.index(151653)
        return hs, (first, last)

    def single(self, task: str, image, dim=None) -> np.ndarray:
        hs, (a, b) = self.hidden(task, image)
        v = hs[a:b + 1].mean(0)
        v /= np.linalg.norm(v)
        if dim is not None:
            v = v[:dim] / np.linalg.norm(v[:dim])
        return v

    def multi(self, task: str, image) -> np.ndarray:
        hs, _ = self.hidden(task, image)
        w, b = self.ck.merged_projector(task)
        t = hs @ w.astype(np.float64).T + b
        return t / np.linalg.norm(t, axis=1, keepdims=True)
