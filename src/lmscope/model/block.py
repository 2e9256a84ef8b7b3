"""One transformer layer: causal self-attention, the MLP, and the block that adds both to the
residual stream (`Block.forward` reads as the maths; recording for the trace path is in one
place). `lmscope.model.transformer` stacks them.

Shapes: b = batch, T = query positions, S = key positions, H = heads, K = key/value heads,
D = d_model, d = d_head, M = d_mlp.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lmscope.model.cache import KVCache, SlotKVCache
from lmscope.model.config import ModelConfig
from lmscope.model.hooks import HookPoint
from lmscope.model.layers import ACTIVATIONS, make_norm
from lmscope.model.positional import apply_rope
from lmscope.model.trace import TraceRecorder

# cuDNN attention builds an execution plan for every new shape (1.5 ms of CPU a call on an H200,
# torch 2.11): decoding, whose keys grow by one each step, would build one per token and layer,
# and serving sees a new prompt length with every request. Inference on CUDA uses the others.
_INFERENCE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attention_backends(device: torch.device, training: bool) -> AbstractContextManager[None]:
    """The SDPA kernels allowed for this call: all when training or off CUDA."""
    if training or device.type != "cuda":
        return nullcontext()
    return sdpa_kernel(_INFERENCE_BACKENDS)


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
        with attention_backends(q.device, self.training):
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
        scores = (q @ k.transpose(-1, -2)).mul_(self.scale)  # [b, H, T, S]
        t, s = scores.shape[-2:]
        if mask is None:  # causal: the keys after each query's own position
            future = torch.ones(t, s, dtype=torch.bool, device=q.device).triu_(s - t + 1)
        else:
            future = ~mask
        scores.masked_fill_(future, float("-inf"))
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
