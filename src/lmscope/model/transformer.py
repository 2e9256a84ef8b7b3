"""The canonical decoder-only transformer.

One module, three paths:
- the reference path (`forward`): scaled-dot-product attention and a KV cache, for training and
  generation, any dtype and device;
- the prepacked path (`enable_prepacked`, `lmscope.model.prepacked`): the same blocks with
  float32 weights prepacked for oneDNN, used by `forward` for CPU inference once enabled;
- the trace path (`run_with_trace`): explicit attention that records every internal quantity
  under TransformerLens-style hook names (see `lmscope.model.trace`).

The layers themselves (`Attention`, `MLP`, `Block`) are in `lmscope.model.block`.

Shapes: b = batch, T = query positions, S = key positions, H = heads, K = key/value heads,
D = d_model, d = d_head, M = d_mlp, V = vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any

import torch
from torch import nn

from lmscope.model.block import MLP, Attention, Block, Rope
from lmscope.model.cache import KVCache, SlotKVCache, causal_mask
from lmscope.model.config import ModelConfig
from lmscope.model.hooks import HookPoint, run_with_hooks
from lmscope.model.layers import make_norm
from lmscope.model.positional import rope_tables, sinusoidal_table
from lmscope.model.prepacked import PrepackedPath, onednn_available
from lmscope.model.trace import Trace, TraceRecorder

__all__ = ["MLP", "Attention", "Block", "Rope", "Transformer"]  # the layer classes live in block


class Transformer(nn.Module):
    sinusoid: torch.Tensor
    rope_cos: torch.Tensor
    rope_sin: torch.Tensor
    _prepacked: PrepackedPath | None = None  # prepacked inference weights, see enable_prepacked

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.hook_embed = HookPoint()
        self.pos_embed = (
            nn.Embedding(cfg.n_ctx, cfg.d_model) if cfg.positional == "learned" else None
        )
        self._build_buffers()
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_final = make_norm(cfg)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.unembed_bias)
        if cfg.tie_embeddings:
            self.unembed.weight = self.embed.weight
        self.reset_parameters()

    # ---- set-up ---------------------------------------------------------------------------
    def _build_buffers(self) -> None:
        """Positional tables: derived from the config, never saved (non-persistent)."""
        cfg = self.cfg
        device = self.embed.weight.device
        if cfg.positional == "sinusoidal":
            table = sinusoidal_table(cfg.n_ctx, cfg.d_model).to(device)
            self.register_buffer("sinusoid", table, persistent=False)
        if cfg.positional == "rope":
            cos, sin = rope_tables(cfg.n_ctx, cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling)
            self.register_buffer("rope_cos", cos.to(device), persistent=False)
            self.register_buffer("rope_sin", sin.to(device), persistent=False)

    def reset_parameters(self) -> None:
        """GPT-2 style initialisation; residual output projections scaled by 1/sqrt(2 * layers)."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
        for block in self.blocks:
            assert isinstance(block, Block)
            for proj in (block.attn.out, block.mlp.fc_out):
                nn.init.normal_(proj.weight, std=std / math.sqrt(2 * self.cfg.n_layers))

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        cfg = self.cfg
        return KVCache(
            cfg.n_layers, batch, cfg.kv_heads, max_len, cfg.head_dim, self.dtype, self.device
        )

    def new_slot_cache(self, slots: int, max_len: int) -> SlotKVCache:
        cfg = self.cfg
        return SlotKVCache(
            cfg.n_layers, slots, cfg.kv_heads, max_len, cfg.head_dim, self.dtype, self.device
        )

    # ---- inputs, shared by every path -------------------------------------------------------
    def _check_length(self, length: int) -> None:
        if length > self.cfg.n_ctx:
            raise ValueError(
                f"sequence of {length} positions exceeds the model's context "
                f"window of {self.cfg.n_ctx} tokens; shorten the prompt or truncate it"
            )

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings [b, T, D] (without positions), e.g. as a base for input saliency."""
        return self.embed(tokens)

    def _prepare(
        self,
        tokens: torch.Tensor | None,
        input_embeds: torch.Tensor | None,
        positions: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        cache: KVCache | SlotKVCache | None,
        rec: TraceRecorder | None,
    ) -> tuple[torch.Tensor, Rope | None, torch.Tensor | None]:
        """What every block reads: the embedded input x [b, T, D], the rotary tables for its
        positions and the attention mask (None where SDPA's causal flag does)."""
        past = 0
        slot_mask: torch.Tensor | None = None
        if isinstance(cache, SlotKVCache):  # one new token for each active row
            if tokens is None or tokens.shape != (cache.n_active, 1):
                raise ValueError(f"slot decoding takes tokens of shape ({cache.n_active}, 1)")
            positions, slot_mask = cache.begin_decode()
        elif cache is not None:
            past = cache.length
        x, positions = self._inputs(tokens, input_embeds, positions, past, rec)
        if isinstance(cache, SlotKVCache):
            mask = slot_mask
        else:
            mask = causal_mask(attention_mask, x.shape[1], past, x.device)
        return x, self._rope(positions, x.dtype), mask

    def _inputs(
        self,
        tokens: torch.Tensor | None,
        input_embeds: torch.Tensor | None,
        positions: torch.Tensor | None,
        past: int,
        rec: TraceRecorder | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if input_embeds is None:
            if tokens is None:
                raise ValueError("give tokens or input_embeds")
            if tokens.dim() == 1:
                tokens = tokens[None]
            input_embeds = self.embed(tokens)
        b, t, _ = input_embeds.shape
        if positions is None:  # the common case: the length is known without a reduction
            self._check_length(past + t)
            positions = torch.arange(past, past + t, device=input_embeds.device).expand(b, t)
        elif positions.numel():
            self._check_length(int(positions.max()) + 1)
        x = self.hook_embed(input_embeds)
        if rec is not None:
            rec("hook_embed", x)
        pos: torch.Tensor | None = None
        if self.pos_embed is not None:
            pos = self.pos_embed(positions)
        elif self.cfg.positional == "sinusoidal":
            pos = self.sinusoid[positions].to(x.dtype)
        if pos is not None:
            if rec is not None:
                rec("hook_pos_embed", pos)
            x = x + pos
        return (self.drop(x) if self.training else x), positions

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> Rope | None:
        if self.cfg.positional != "rope":
            return None
        cos = self.rope_cos[positions].to(dtype)[:, None]  # [b, 1, T, r]
        sin = self.rope_sin[positions].to(dtype)[:, None]
        return cos, sin

    # ---- reference path (and the hand-over to the prepacked path) -----------------------------
    def forward(
        self,
        tokens: torch.Tensor | None = None,
        *,
        input_embeds: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | SlotKVCache | None = None,
        last_only: bool = False,
        last_n: int | None = None,
        at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [b, T, V] (or [b, 1, V] with last_only, [b, last_n, V] with last_n, [b, n, V]
        with `at`: indices [b, n] of the positions, of this call's T, to unembed).

        attention_mask: [b, past + T], 1 for real tokens and 0 for padding (left padding), or a
        boolean [b, 1, T, past + T] mask used as given.
        cache: a KVCache; new keys/values are appended and its length advanced. A SlotKVCache
        decodes one token for each of its active rows (continuous batching): tokens [n, 1].
        With the prepacked path enabled (eval mode, autograd off) the blocks run prepacked.
        """
        x, rope, mask = self._prepare(tokens, input_embeds, positions, attention_mask, cache, None)
        prepacked = self._current_prepacked()
        if prepacked is not None:
            x = prepacked.blocks(x, rope, mask, cache)
        else:
            for block in self.blocks:
                x = block(x, rope, mask, cache)
        if cache is not None:
            cache.advance(x.shape[1])
        if last_only:
            x = x[:, -1:]
        elif last_n is not None:  # e.g. to score a prompt's end without unembedding it all
            x = x[:, -last_n:]
        elif at is not None:  # e.g. the ends of sequences packed into one row
            x = x.gather(1, at[..., None].expand(-1, -1, x.shape[-1]))
        if prepacked is not None:
            return prepacked.logits(x)
        return self.unembed(self.ln_final(x))

    # ---- trace path ---------------------------------------------------------------------------
    def run_with_trace(
        self,
        tokens: torch.Tensor,
        *,
        names: Collection[str] | Callable[[str], bool] | None = None,
        attention_mask: torch.Tensor | None = None,
        grad: bool = False,
    ) -> Trace:
        """Run the explicit path and record internal activations.

        names: hook names to keep (a collection or a predicate); None keeps the default set
        (everything except attention scores and rotated q/k). Tensors are [b, pos, ...],
        attention patterns [b, head, query, key].
        """
        if tokens.dim() == 1:
            tokens = tokens[None]
        rec = TraceRecorder(names)
        with torch.set_grad_enabled(grad):
            x, rope, mask = self._prepare(tokens, None, None, attention_mask, None, rec)
            for block in self.blocks:
                x = block(x, rope, mask, None, rec)
            normalized = self.ln_final(x)
            rec("ln_final.hook_normalized", normalized)
            logits = self.unembed(normalized)
        return Trace(tokens=tokens, logits=logits, activations=rec.store, cfg=self.cfg)

    run_with_hooks = run_with_hooks  # (tokens, fwd_hooks=[(name, fn)]): lmscope.model.hooks

    # ---- inference speed ------------------------------------------------------------------------
    def enable_prepacked(self) -> bool:
        """Prepack the weights for CPU inference (see `lmscope.model.prepacked`); True if enabled.

        Only float32 models on a CPU with oneDNN qualify; others keep the reference path. The
        packed copy costs as much memory as the weights. `forward` uses it when autograd is off
        and the model is in eval mode, and drops it once any parameter changes.
        """
        if self.device.type != "cpu" or self.dtype != torch.float32 or not onednn_available():
            return False
        with torch.no_grad():
            self._prepacked = PrepackedPath(self)
        return True

    def disable_prepacked(self) -> None:
        """Drop the packed copy (and its memory); `forward` takes the reference path again."""
        self._prepacked = None

    def _current_prepacked(self) -> PrepackedPath | None:
        """The prepacked path where it may answer: enabled, eval mode, no autograd, fresh."""
        prepacked = self._prepacked
        if prepacked is None or self.training or torch.is_grad_enabled():
            return None
        if not prepacked.is_current():
            self._prepacked = None  # a parameter changed since packing: the packed copy is stale
            return None
        return prepacked

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the packed weights behind (oneDNN tensors cannot be
        copied); a copy re-packs when asked to."""
        state = self.__dict__.copy()
        state.pop("_prepacked", None)
        return state

    @property
    def prepacked_enabled(self) -> bool:
        return self._prepacked is not None and self._prepacked.is_current()

    # ---- bookkeeping --------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component (tied weights counted once, under `embed`)."""
        counts: dict[str, int] = {}
        seen: set[int] = set()
        for name, param in self.named_parameters():
            if id(param) in seen:
                continue
            seen.add(id(param))
            parts = name.split(".")
            if parts[0] == "blocks":
                key = {"attn": "attention", "mlp": "mlp"}.get(parts[2], "norms")
            else:
                key = {"ln_final": "norms"}.get(parts[0], parts[0])
            counts[key] = counts.get(key, 0) + param.numel()
        counts["total"] = sum(counts.values())
        return counts
