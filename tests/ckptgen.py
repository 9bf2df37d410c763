"""Synthetic jina-embeddings-v4 checkpoints in the Hugging Face layout.

A small Qwen2.5-VL-shaped text model (random weights from modelgen), a
stand-in vision tower and lm_head (which the converter must skip), the
multi-vector projector, a PEFT adapter folder holding per-task LoRA A/B pairs
for every adapted linear and the projector, config.json and tokenizer.json
(the vendored Qwen2 vocabulary, saved by the `tokenizers` package).

Two key layouts, since the real one is not verified: "nested" (newer
transformers: model.language_model.layers.N..., adapter keys without
`.default`) and "flat" (model.layers.N..., adapter keys with `.default`).

The reference for a task is transformers' Qwen2Model holding the base weights
with that task's LoRA merged by plain matrix arithmetic here (W + s * B @ A),
and the projector likewise.
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


@dataclasses.dataclass
class Checkpoint:
    root: Path
    shape: mg.Shape
    n_vocab: int
    weights: dict          # HF short names -> float32 (as stored, after dtype rounding)
    projector: tuple       # (W (out, hidden), b (out,))
    lora: dict             # task -> {(layer or None, module): (A, B)}
    scale: float

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
                     lora_std: float = 0.5) -> Checkpoint:
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
    vision = "model.visual." if layout == "nested" else "visual."
    base[vision + "patch_embed.proj.weight"] = rng.standard_normal((32, 3, 2, 2), dtype=np.float32)
    base[vision + "blocks.0.attn.qkv.weight"] = rng.standard_normal((48, 16), dtype=np.float32)
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
           "multi_vector_projector_dim": projector_out}
    if layout == "nested":
        cfg["text_config"] = text_cfg
        cfg["vocab_size"] = n_vocab
    else:
        cfg.update(text_cfg)
    (root / "config.json").write_text(json.dumps(cfg))
    vocab.reference_tokenizer().save(str(root / "tokenizer.json"))
    return Checkpoint(root, shape, n_vocab, weights, (proj_w, proj_b), lora, alpha / rank)


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
