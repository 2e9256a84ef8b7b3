"""Export a LLaMA-family canonical model (with its byte-level BPE tokenizer) as a float32 GGUF
file that llama.cpp and transformers' GGUF loader read.

The layout is not written twice: lmscope's own GGUF reader (zoo/gguf.py) is run on a stand-in
file whose tensors hold *row ids*; what it returns says, for every row of every lmscope
parameter, which GGUF row it was read from (q/k RoPE permutation, q/k/v and gate/up splits
included), and the export writes each row back there. The metadata is checked the same way: the
reader's config from the written keys must give back this model's architecture, field for
field, or the export stops and names what GGUF's llama architecture cannot express.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from lmscope.files import atomic_path
from lmscope.model.config import ModelConfig
from lmscope.model.transformer import Transformer
from lmscope.zoo.export_hf import ExportError, _architecture
from lmscope.zoo.gguf import config_from_gguf, state_dict_from_gguf

ARCH = "llama"
ROW_BASE = 1  # row ids start here, so a zero left by the reader is never taken for a row
# llama.cpp token types
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def gguf_metadata(cfg: ModelConfig, name: str = "lmscope") -> dict[str, Any]:
    """The `llama.*` and `general.*` keys describing `cfg` (GGUF key -> value)."""
    p = f"{ARCH}."
    return {
        "general.architecture": ARCH,
        "general.name": name,
        p + "vocab_size": cfg.vocab_size,
        p + "context_length": cfg.n_ctx,
        p + "embedding_length": cfg.d_model,
        p + "block_count": cfg.n_layers,
        p + "feed_forward_length": cfg.mlp_dim,
        p + "attention.head_count": cfg.n_heads,
        p + "attention.head_count_kv": cfg.kv_heads,
        p + "attention.key_length": cfg.head_dim,
        p + "attention.value_length": cfg.head_dim,
        p + "rope.dimension_count": cfg.head_dim,
        p + "rope.freq_base": float(cfg.rope_theta),
        p + "attention.layer_norm_rms_epsilon": float(cfg.norm_eps),
    }


def gguf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """GGUF tensor names and (numpy, row-major) shapes of a llama model like `cfg`."""
    d, q, kv = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (cfg.vocab_size, d)}
    for i in range(cfg.n_layers):
        b = f"blk.{i}."
        shapes |= {
            b + "attn_norm.weight": (d,),
            b + "attn_q.weight": (q, d),
            b + "attn_k.weight": (kv, d),
            b + "attn_v.weight": (kv, d),
            b + "attn_output.weight": (d, q),
            b + "ffn_norm.weight": (d,),
            b + "ffn_gate.weight": (cfg.mlp_dim, d),
            b + "ffn_up.weight": (cfg.mlp_dim, d),
            b + "ffn_down.weight": (d, cfg.mlp_dim),
        }
        if cfg.qkv_bias:
            shapes |= {b + "attn_q.bias": (q,), b + "attn_k.bias": (kv,), b + "attn_v.bias": (kv,)}
    shapes["output_norm.weight"] = (d,)
    if not cfg.tie_embeddings:
        shapes["output.weight"] = (cfg.vocab_size, d)
    return shapes


def _stand_in(metadata: dict[str, Any], tensors: dict[str, np.ndarray]) -> Any:
    """An object that quacks like gguf.GGUFReader for zoo/gguf.py (F32 tensors only)."""
    from gguf import GGMLQuantizationType

    fields = {k: SimpleNamespace(contents=lambda v=v: v) for k, v in metadata.items()}
    return SimpleNamespace(
        fields=fields,
        tensors=[
            SimpleNamespace(name=n, data=a, tensor_type=GGMLQuantizationType.F32)
            for n, a in tensors.items()
        ],
    )


def check_expressible(cfg: ModelConfig) -> None:
    """ExportError naming every feature of `cfg` that GGUF's llama architecture (as lmscope's
    reader and transformers' GGUF loader read it) cannot express."""
    # Biases on q/k/v: llama.cpp's llama graph would take them, but transformers' GGUF llama
    # loader drops them, so the file would not load back with our logits.
    problems = ["qkv_bias=True"] if cfg.qkv_bias else []
    empty = {n: np.zeros(0, np.float32) for n in gguf_shapes(cfg)}
    back = config_from_gguf(_stand_in(gguf_metadata(cfg), empty))
    ours, theirs = _architecture(cfg), _architecture(back)
    if cfg.norm == theirs["norm"]:
        ours.pop("norm_bias"), theirs.pop("norm_bias")  # RMSNorm has no bias either way
    problems += [f"{k}={ours[k]!r}" for k in ours if ours[k] != theirs[k]]
    if problems:
        raise ExportError(
            "GGUF's llama architecture cannot express " + ", ".join(problems) + " of this "
            f"{cfg.architecture!r} model (GGUF export covers LLaMA/Mistral/SmolLM2-shaped models: "
            "RoPE, RMSNorm, gated SiLU MLP, no biases); use --format hf instead"
        )


def gguf_tensors(model: Transformer) -> dict[str, np.ndarray]:
    """The model's weights as float32 GGUF tensors, placed by inverting zoo/gguf.py's reader."""
    cfg = model.cfg
    shapes = gguf_shapes(cfg)
    row_ids: dict[str, np.ndarray] = {}
    start = ROW_BASE
    for name, shape in shapes.items():
        row_ids[name] = np.arange(start, start + shape[0], dtype=np.float32)
        start += shape[0]
    if start >= 1 << 24:
        raise ExportError("model too large for the row map (over 16M rows)")
    mapped = state_dict_from_gguf(_stand_in(gguf_metadata(cfg), dict(row_ids)), cfg)
    ours = model.state_dict()
    rows: list[torch.Tensor | None] = [None] * start
    for name, where in mapped.items():
        value = ours[name].detach().to("cpu", torch.float32)
        if value.shape[0] != where.shape[0]:
            raise ExportError(f"{name}: {tuple(value.shape)} does not fit the GGUF layout")
        for row, src in zip(where.long().tolist(), value, strict=True):
            rows[row] = src
    out: dict[str, np.ndarray] = {}
    for name, ids in row_ids.items():
        picked = [rows[int(i)] for i in ids]
        filled = [r for r in picked if r is not None]
        if len(filled) != len(picked):
            raise ExportError(f"GGUF tensor {name} has rows no lmscope parameter fills")
        out[name] = torch.stack(filled).reshape(shapes[name]).numpy()
    return out


def tokenizer_metadata(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """`tokenizer.*` keys for a byte-level BPE (GPT-2 style) fast tokenizer; rows of the
    embedding beyond the tokenizer's vocabulary get unused `[PAD<id>]` tokens."""
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise ExportError(
            "GGUF export writes byte-level BPE (GPT-2 style) tokenizers only; this tokenizer is "
            f"{model.get('type') or type(tokenizer).__name__}; use --format hf instead"
        )
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ExportError(
            f"the tokenizer has ids up to {max(by_id)} but the model only {vocab_size} rows"
        )
    added = {i: t for i, t in tokenizer.added_tokens_decoder.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        tokens.append(by_id[i])
        types.append(NORMAL if i not in added else (CONTROL if added[i].special else USER_DEFINED))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
    }
    for key, attr in (("bos", "bos"), ("eos", "eos"), ("padding", "pad"), ("unknown", "unk")):
        token_id = getattr(tokenizer, f"{attr}_token_id", None)
        if token_id is not None:
            meta[f"tokenizer.ggml.{key}_token_id"] = int(token_id)
    probe = tokenizer("a")["input_ids"]
    bos = tokenizer.bos_token_id
    meta["tokenizer.ggml.add_bos_token"] = bool(bos is not None and probe and probe[0] == bos)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        meta["tokenizer.chat_template"] = template
    return meta


def _write(path: Path, metadata: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), ARCH)  # writes general.architecture itself
    for key, value in metadata.items():
        if key == "general.architecture":
            continue
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)  # token strings, merges, int32 token types
    for name, array in tensors.items():
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def export_gguf(
    model: Transformer,
    tokenizer: Any,
    out: str | Path,
    *,
    overwrite: bool = False,
    name: str = "lmscope",
) -> Path:
    """Write `model` (float32) and its tokenizer as one GGUF file at `out`, through a temporary
    name; nothing is left at `out` if anything fails."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"{out} already exists; pass overwrite=True (--overwrite) to replace it"
        )
    cfg = model.cfg
    check_expressible(cfg)
    if tokenizer is None:
        raise ExportError("GGUF files carry their tokenizer, but this model has none")
    metadata = gguf_metadata(cfg, name) | tokenizer_metadata(tokenizer, cfg.vocab_size)
    tensors = gguf_tensors(model)
    with atomic_path(out) as tmp:
        _write(tmp, metadata, tensors)
    return out
