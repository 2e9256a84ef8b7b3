"""GGUF files (llama.cpp's format) into the canonical model.

Quantised tensors (Q4_1, Q8_0, ...) are dequantised to float32 with the `gguf` package. The
tokenizer and chat template stored in the file are rebuilt by transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmscope.model.config import ModelConfig

SUPPORTED_GGUF_ARCHITECTURES = ("llama", "qwen2")


class GGUFError(ValueError):
    """A GGUF file that cannot be read or describes an unsupported model."""


def _reader(path: Path) -> Any:
    from gguf import GGUFReader

    if not path.is_file():
        raise GGUFError(f"GGUF file not found: {path}")
    try:
        return GGUFReader(str(path))
    except Exception as err:  # the reader raises many kinds of errors on corrupt files
        raise GGUFError(
            f"cannot read GGUF file {path}: {err}; is it complete and a GGUF file?"
        ) from err


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def config_from_gguf(reader: Any) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise GGUFError(
            f"GGUF architecture {arch!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_GGUF_ARCHITECTURES)}"
        )
    names = {t.name for t in reader.tensors}
    d_model = int(_field(reader, f"{arch}.embedding_length"))
    n_heads = int(_field(reader, f"{arch}.attention.head_count"))
    vocab = _field(reader, f"{arch}.vocab_size")
    if vocab is None:
        vocab = len(_field(reader, "tokenizer.ggml.tokens"))
    return ModelConfig(
        vocab_size=int(vocab),
        d_model=d_model,
        n_layers=int(_field(reader, f"{arch}.block_count")),
        n_heads=n_heads,
        n_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", n_heads)),
        d_head=int(_field(reader, f"{arch}.attention.key_length", d_model // n_heads)),
        d_mlp=int(_field(reader, f"{arch}.feed_forward_length")),
        n_ctx=int(_field(reader, f"{arch}.context_length", 2048)),
        positional="rope",
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        norm="rmsnorm",
        norm_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        activation="silu",
        gated_mlp=True,
        qkv_bias="blk.0.attn_q.bias" in names,
        out_bias=False,
        mlp_bias=False,
        tie_embeddings="output.weight" not in names,
        architecture=str(arch),
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
    )


def _unpermute_rope(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved RoPE) into the rotate-half layout."""
    rows = weight.shape[0]
    half = rows // n_heads // 2
    return weight.reshape(n_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def state_dict_from_gguf(reader: Any, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    from gguf import quants

    raw: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        array = quants.dequantize(tensor.data, tensor.tensor_type)
        raw[tensor.name] = np.array(array, dtype=np.float32, order="C", copy=True)

    def take(name: str) -> torch.Tensor:
        try:
            return torch.from_numpy(raw.pop(name))
        except KeyError:
            raise GGUFError(f"GGUF file lacks tensor {name!r}") from None

    state: dict[str, torch.Tensor] = {"embed.weight": take("token_embd.weight")}
    for i in range(cfg.n_layers):
        pre, out = f"blk.{i}.", f"blocks.{i}."
        q = torch.from_numpy(_unpermute_rope(raw.pop(pre + "attn_q.weight"), cfg.n_heads))
        k = torch.from_numpy(_unpermute_rope(raw.pop(pre + "attn_k.weight"), cfg.kv_heads))
        state[out + "attn.qkv.weight"] = torch.cat([q, k, take(pre + "attn_v.weight")])
        if cfg.qkv_bias:
            qb = torch.from_numpy(_unpermute_rope(raw.pop(pre + "attn_q.bias"), cfg.n_heads))
            kb = torch.from_numpy(_unpermute_rope(raw.pop(pre + "attn_k.bias"), cfg.kv_heads))
            state[out + "attn.qkv.bias"] = torch.cat([qb, kb, take(pre + "attn_v.bias")])
        state[out + "attn.out.weight"] = take(pre + "attn_output.weight")
        state[out + "ln1.weight"] = take(pre + "attn_norm.weight")
        state[out + "ln2.weight"] = take(pre + "ffn_norm.weight")
        gate, up = take(pre + "ffn_gate.weight"), take(pre + "ffn_up.weight")
        state[out + "mlp.fc_in.weight"] = torch.cat([gate, up])
        state[out + "mlp.fc_out.weight"] = take(pre + "ffn_down.weight")
    state["ln_final.weight"] = take("output_norm.weight")
    if not cfg.tie_embeddings:
        state["unembed.weight"] = take("output.weight")
    leftover = sorted(n for n in raw if not n.startswith("rope_freqs"))
    if leftover:
        raise GGUFError(f"GGUF file has tensors lmscope does not understand: {leftover[:5]}")
    return state


def load_gguf_tokenizer(path: Path) -> Any:
    """The file's tokenizer (with its chat template) as a transformers fast tokenizer."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as err:
        raise GGUFError(f"cannot rebuild the tokenizer stored in {path}: {err}") from err


def read_gguf(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Config and float32 state dict (canonical names) of a GGUF file."""
    reader = _reader(Path(path))
    cfg = config_from_gguf(reader)
    return cfg, state_dict_from_gguf(reader, cfg)


def from_gguf(path: str | Path) -> tuple[Any, Any]:
    """(Transformer, tokenizer) from a GGUF file."""
    from lmscope.zoo.checkpoint import model_from_state_dict

    cfg, state = read_gguf(path)
    model = model_from_state_dict(cfg, state, source=str(path), error=GGUFError)
    return model, load_gguf_tokenizer(Path(path))
