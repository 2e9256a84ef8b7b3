"""The canonical decoder-only transformer.

One module, three paths:
- the reference path (`forward`): scaled-dot-product attention and a KV cache, for training and
  generation, any dtype and device;
- the prepacked path (`enable_prepacked`, `lmscope.model.prepacked`): the same blocks with
  float32 weights prepacked for oneDNN, used by `forward` for CPU inference once enabled;
- the trace path (`run_with_trace`): explicit attention that records every internal quantity
  under TransformerLens-style hook names (see `lmscope.model.trace`).

Shapes: b = batch, T = query positions, S = key positions, H = heads, K = key/value heads,
D = d_model, d = d_head, M = d_mlp, V = vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmscope.model.cache import KVCache, SlotKVCache, causal_mask
from lmscope.model.config import ModelConfig
from lmscope.model.hooks import HookPoint, run_with_hooks
from lmscope.model.layers import ACTIVATIONS, make_norm
from lmscope.model.positional import apply_rope, rope_tables, sinusoidal_table
from lmscope.model.prepacked import PrepackedPath, onednn_available
from lmscope.model.trace import Trace, TraceRecorder

Rope = tuple[torch.Tensor, torch.Tensor]  # cos, sin [b, 1, T, rotary_dim]


class Attention(nn.Module):
    """Causal self-attention with MHA, GQA or MQA. `qkv` packs [q heads | k heads | v heads]."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.kv_heads
        self.d_head = cfg.head_dim
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.dropout = cfg.dropout
        qkv_out = (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, qkv_out, bias=cfg.qkv_bias)
        self.out = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=cfg.out_bias)
        self.hook_z = HookPoint()

    # Weights in TransformerLens layout, for the explainers.
    @property
    def W_O(self) -> torch.Tensor:
        """[H, d, D]: head h writes z_h @ W_O[h] into the residual stream."""
        return self.out.weight.view(-1, self.n_heads, self.d_head).permute(1, 2, 0)

    @property
    def b_O(self) -> torch.Tensor | None:
        return self.out.bias

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope | None,
        mask: torch.Tensor | None,
        cache: KVCache | SlotKVCache | None,
        rec: TraceRecorder | None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        heads, kv = self.n_heads, self.n_kv_heads
        packed = self.qkv(x).view(b, t, heads + 2 * kv, self.d_head)
        qk, v = (
            packed[:, :, : heads + kv].transpose(1, 2),
            packed[:, :, heads + kv :].transpose(1, 2),
        )
        name = f"blocks.{self.layer}.attn."
        if rec is not None:
            rec(name + "hook_q", packed[:, :, :heads])  # [b, T, H, d]
            rec(name + "hook_k", packed[:, :, heads : heads + kv])  # [b, S, K, d]
            rec(name + "hook_v", packed[:, :, heads + kv :])  # [b, S, K, d]
        if rope is not None:
            qk = apply_rope(qk, *rope)  # queries and keys rotate together: one set of ops
        q, k = qk.split([heads, kv], dim=1)
        if rope is not None and rec is not None:
            rec(name + "hook_rot_q", q.transpose(1, 2))
            rec(name + "hook_rot_k", k.transpose(1, 2))
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        # The trace path mixes values with the same kernel as the reference path, so both give the
        # same residual stream bit for bit; the pattern is recorded from an explicit softmax.
        z = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask is None and q.shape[2] > 1,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        b, _, t, _ = z.shape
        z_heads = self.hook_z(z.transpose(1, 2))  # [b, T, H, d]
        if rec is not None:
            self._record_pattern(q, k, mask, rec)
            rec(name + "hook_z", z_heads)
            if rec.wants(name + "hook_result"):
                rec(name + "hook_result", torch.einsum("bthd,hdD->bthD", z_heads, self.W_O))
        return self.out(z_heads.reshape(b, t, self.n_heads * self.d_head))

    def _record_pattern(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        mask: torch.Tensor | None,
        rec: TraceRecorder,
    ) -> None:
        name = f"blocks.{self.layer}.attn."
        if not (rec.wants(name + "hook_pattern") or rec.wants(name + "hook_attn_scores")):
            return
        group = self.n_heads // self.n_kv_heads
        if group > 1:
            k = k.repeat_interleave(group, dim=1)
        scores = (q @ k.transpose(-1, -2)) * self.scale  # [b, H, T, S]
        t, s = scores.shape[-2:]
        if mask is None:
            mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
        scores = scores.masked_fill(~mask, float("-inf"))
        rec(name + "hook_attn_scores", scores)
        rec(name + "hook_pattern", torch.softmax(scores.float(), dim=-1).to(q.dtype))


class MLP(nn.Module):
    """Position-wise MLP. Gated: `fc_in` packs [gate | up] and the hidden is act(gate) * up."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.gated = cfg.gated_mlp
        self.d_mlp = cfg.mlp_dim
        self.act = ACTIVATIONS[cfg.activation]
        width = 2 * cfg.mlp_dim if cfg.gated_mlp else cfg.mlp_dim
        self.fc_in = nn.Linear(cfg.d_model, width, bias=cfg.mlp_bias)
        self.fc_out = nn.Linear(cfg.mlp_dim, cfg.d_model, bias=cfg.mlp_bias)
        self.hook_post = HookPoint()

    @property
    def W_out(self) -> torch.Tensor:
        """[M, D]: neuron k writes post_k * W_out[k] into the residual stream."""
        return self.fc_out.weight.t()

    @property
    def b_out(self) -> torch.Tensor | None:
        return self.fc_out.bias

    def forward(self, x: torch.Tensor, rec: TraceRecorder | None) -> torch.Tensor:
        hidden = self.fc_in(x)
        name = f"blocks.{self.layer}.mlp."
        if self.gated:
            gate, up = hidden.split(self.d_mlp, dim=-1)
            post = self.act(gate) * up
            if rec is not None:
                rec(name + "hook_pre", gate)
                rec(name + "hook_pre_linear", up)
        else:
            post = self.act(hidden)
            if rec is not None:
                rec(name + "hook_pre", hidden)
        post = self.hook_post(post)
        if rec is not None:
            rec(name + "hook_post", post)
        return self.fc_out(post)


class Block(nn.Module):
    """One layer: attention then MLP, each reading a normalised residual stream and adding
    its output back. Parallel blocks (GPT-NeoX) feed both from the block's input."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.parallel = cfg.parallel_attn_mlp
        self.ln1 = make_norm(cfg)
        self.attn = Attention(cfg, layer)
        self.ln2 = make_norm(cfg)
        self.mlp = MLP(cfg, layer)
        self.drop = nn.Dropout(cfg.dropout)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope | None,
        mask: torch.Tensor | None,
        cache: KVCache | SlotKVCache | None,
        rec: TraceRecorder | None = None,
    ) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        h1 = self.ln1(x)
        attn_out = self.hook_attn_out(self._dropout(self.attn(h1, rope, mask, cache, rec)))
        mid = self.hook_resid_mid(x + attn_out)
        h2 = self.ln2(x if self.parallel else mid)
        mlp_out = self.hook_mlp_out(self._dropout(self.mlp(h2, rec)))
        out = self.hook_resid_post(mid + mlp_out)
        if rec is not None:
            # Parallel blocks: resid_mid is still resid_pre + attn_out, but the MLP read resid_pre.
            values = (x, h1, attn_out, mid, h2, mlp_out, out)
            for suffix, value in zip(_BLOCK_HOOKS, values, strict=True):
                rec(f"blocks.{self.layer}.{suffix}", value)
        return out

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(x) if self.training else x  # no call at all at inference


_BLOCK_HOOKS = (
    "hook_resid_pre",
    "ln1.hook_normalized",
    "hook_attn_out",
    "hook_resid_mid",
    "ln2.hook_normalized",
    "hook_mlp_out",
    "hook_resid_post",
)


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
    ) -> torch.Tensor:
        """Logits [b, T, V] (or [b, 1, V] with last_only, [b, last_n, V] with last_n).

        attention_mask: [b, past + T], 1 for real tokens and 0 for padding (left padding).
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
