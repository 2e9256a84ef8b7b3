"""Recording the trace the explainers need, and reading it back as per-layer tensors.

`record(model, tokens)` runs the model's trace path keeping only the activations the explainers
read (a full trace of a 1024-token prompt would not fit the memory budget). `TraceView` gives
typed access to one sequence of a trace: residual nodes, attention patterns and per-head value
vectors already mapped through W_O, which is what the contribution maths works on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

from lmscope.explain.budget import (
    RELEASE_ABOVE,
    ShouldStop,
    bytes_per_point,
    check_cancelled,
    release_memory,
)
from lmscope.explain.errors import ExplainInputError, check_tokens
from lmscope.model.modes import eval_mode
from lmscope.model.trace import Trace, TraceRecorder
from lmscope.model.transformer import Block, Transformer

ResidKind = Literal["embed", "resid_mid", "resid_post"]
# Patterns up to this many floats are recomputed for all heads in one call (short prompts: fewer,
# larger operations); longer ones one key/value head at a time, to bound the peak.
ONE_CALL_PATTERN = 1 << 21

# What the route graph, the lens and the head/neuron tools read. Attention patterns are not kept
# (L x H x T x T floats: 1.1 GB for 1024 tokens on SmolLM2-135M); `TraceView.pattern` recomputes
# one layer's from the queries and keys (rotated, with RoPE) with the model's own code. q, k and v
# are views of one projection output, so keeping all three costs no more than keeping v; with
# RoPE, `record` keeps the rotated q and k and a copy of v, and lets the projection go. Nor is
# resid_post kept: the block computes it as resid_mid + mlp_out, and so does `TraceView`.
FLOW_SUFFIXES = (
    "hook_resid_mid",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_rot_q",
    "attn.hook_rot_k",
    "attn.hook_v",
    "hook_mlp_out",
)
NEURON_SUFFIXES = ("mlp.hook_post",)


def keeps(neurons: bool = True) -> Callable[[str], bool]:
    """The hook-name predicate that `record` passes to `run_with_trace`."""
    suffixes = FLOW_SUFFIXES + (NEURON_SUFFIXES if neurons else ())

    def keep(name: str) -> bool:
        if name == "blocks.0.hook_resid_pre":
            return True
        return name.startswith("blocks.") and name.endswith(suffixes)

    return keep


def to_tokens(tokens: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """A [1, T] long tensor from a list of ids or a [T] / [1, T] tensor."""
    t = torch.as_tensor(tokens, dtype=torch.long)
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.shape[0] != 1:
        raise ExplainInputError(
            f"explain works on one sequence at a time; got tokens of shape {tuple(t.shape)}"
        )
    return t


def record(
    model: Transformer,
    tokens: torch.Tensor | Sequence[int],
    *,
    neurons: bool = False,
    should_stop: ShouldStop | None = None,
) -> Trace:
    """Run the trace path on one sequence, keeping what the explainers need.

    neurons: also keep the MLP hidden activations (`mlp.hook_post`); without them (the default,
    189 MB for 1024 tokens on SmolLM2-135M) `TraceView.mlp_hidden` recomputes a layer's on
    demand, one MLP pass.
    should_stop: checked once before the forward pass (see `lmscope.explain.budget`).
    """
    t = to_tokens(tokens).to(model.device)
    check_tokens(t.shape[1], model.cfg.n_ctx)
    check_cancelled(should_stop, "tracing the prompt")
    with eval_mode(model):
        trace = model.run_with_trace(t, names=keeps(neurons))
    _drop_unrotated(trace)
    if bytes_per_point(model.cfg, t.shape[1], model.dtype) > RELEASE_ABOVE:
        release_memory()  # the forward's temporaries: the flow that follows would add to them
    return trace


def _drop_unrotated(trace: Trace) -> None:
    """With RoPE the patterns come from the rotated q and k: drop the unrotated ones and copy v
    out of the q/k/v projection it views, so the projection is freed (90 MB of 112 at 1024 tokens
    on SmolLM2-135M)."""
    acts = trace.activations
    for name in [n for n in acts if n.endswith("attn.hook_rot_q")]:
        attn = name.removesuffix("hook_rot_q")
        if attn + "hook_rot_k" not in acts:
            continue
        acts.pop(attn + "hook_q", None)
        acts.pop(attn + "hook_k", None)
        if attn + "hook_v" in acts:
            acts[attn + "hook_v"] = acts[attn + "hook_v"].contiguous()


def _row(tensor: torch.Tensor, position: int | None) -> torch.Tensor:
    """The whole [T, ...] tensor, or its row at `position`."""
    return tensor if position is None else tensor[position]


class TraceView:
    """Per-layer tensors of one sequence (batch row `batch`) of a trace, in float32 on CPU."""

    def __init__(self, model: Transformer, trace: Trace, batch: int = 0) -> None:
        self.model = model
        self.trace = trace
        self.batch = batch
        self.cfg = model.cfg
        self.n_layers = model.cfg.n_layers
        self.n_heads = model.cfg.n_heads
        self.n_tokens = int(trace.tokens.shape[-1])
        self.parallel = model.cfg.parallel_attn_mlp
        self.tokens: list[int] = [int(t) for t in trace.tokens[batch].tolist()]

    def get(self, name: str) -> torch.Tensor:
        if name not in self.trace:
            raise KeyError(
                f"the trace has no {name!r}; record it with lmscope.explain.trace.record(model, "
                "tokens) (or run_with_trace with that name)"
            )
        return self.trace[name][self.batch].detach().float().cpu()

    # ---- residual nodes ---------------------------------------------------------------------
    def resid_pre(self, layer: int, position: int | None = None) -> torch.Tensor:
        """[T, D] residual entering block `layer` (layer 0: the input embeddings); [D] at
        `position`."""
        name = f"blocks.{layer}.hook_resid_pre"
        if name in self.trace or layer == 0:
            return _row(self.get(name), position)
        return self.resid_post(layer - 1, position)

    def resid_mid(self, layer: int) -> torch.Tensor:
        """[T, D] residual after attention (parallel blocks: resid_pre + attn_out)."""
        return self.get(f"blocks.{layer}.hook_resid_mid")

    def resid_post(self, layer: int, position: int | None = None) -> torch.Tensor:
        """[T, D] residual after the block: recorded, or resid_mid + mlp_out (the block's own sum,
        in the trace's dtype, so bit for bit the same); [D] at `position` (the same row)."""
        name = f"blocks.{layer}.hook_resid_post"
        mid, out = f"blocks.{layer}.hook_resid_mid", f"blocks.{layer}.hook_mlp_out"
        if name in self.trace or mid not in self.trace or out not in self.trace:
            return _row(self.get(name), position)
        rows: int | tuple[int, int] = self.batch if position is None else (self.batch, position)
        total = self.trace[mid][rows] + self.trace[out][rows]
        return total.detach().float().cpu()

    def residual(self, kind: ResidKind, layer: int, position: int | None = None) -> torch.Tensor:
        """[T, D] residual node (`embed`, `resid_mid`, `resid_post`); [D] at `position`."""
        if kind == "embed":
            return self.resid_pre(0, position)
        if kind == "resid_mid":
            return _row(self.resid_mid(layer), position)
        if kind == "resid_post":
            return self.resid_post(layer, position)
        raise ExplainInputError(
            f"unknown residual node kind {kind!r}; use embed, resid_mid or resid_post"
        )

    # ---- attention ---------------------------------------------------------------------------
    def pattern(self, layer: int, position: int | None = None) -> torch.Tensor:
        """[H, T(query), T(key)] attention probabilities: recorded, or recomputed from the
        rotated queries and keys by the attention module's own pattern code (bit for bit the
        pattern `run_with_trace` records; traces without an attention mask, as `record`'s).
        position: only that query's row, [H, T(key)] (recomputed alone: equal to the full
        pattern's row up to float rounding, at 1/T of the cost)."""
        attn = f"blocks.{layer}.attn."
        name = attn + "hook_pattern"
        rot = "rot_" if attn + "hook_rot_q" in self.trace else ""
        if name in self.trace or attn + f"hook_{rot}q" not in self.trace:
            full = self.get(name)
            return full if position is None else full[:, position]
        rows = slice(self.batch, self.batch + 1)
        q = self.trace[attn + f"hook_{rot}q"][rows].transpose(1, 2)  # [1, H, T, d]
        k = self.trace[attn + f"hook_{rot}k"][rows].transpose(1, 2)  # [1, K, S, d]
        n_src = k.shape[2]
        if position is not None:  # one query: the keys up to it, then zeros (future keys)
            n_tok = q.shape[2]
            keep = position % n_tok + 1 + n_src - n_tok
            q, k = q[:, :, position % n_tok :][:, :, :1], k[:, :, :keep]
        shape = (q.shape[1], q.shape[2], n_src)
        if position is None and shape[0] * shape[1] * shape[2] <= ONE_CALL_PATTERN:
            found = self._pattern_of(layer, q, k)  # all heads at once, as the forward does
            return found if found.shape[-1] == n_src else torch.zeros(shape).copy_(found)
        out = torch.empty(shape) if position is None else torch.zeros(shape)
        # One key/value head (and its query heads) at a time: a third of the peak memory.
        n_kv = k.shape[1]
        group = q.shape[1] // n_kv
        for g in range(n_kv):
            heads = slice(g * group, (g + 1) * group)
            found = self._pattern_of(layer, q[:, heads], k[:, g : g + 1])
            out[heads, :, : found.shape[-1]] = found
        return out if position is None else out[:, 0]

    def _pattern_of(self, layer: int, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """[H', T', S'] pattern of these queries and keys by the attention module's own code."""
        name = f"blocks.{layer}.attn.hook_pattern"
        rec = TraceRecorder({name})
        with torch.no_grad():
            self.block(layer).attn._record_pattern(q, k, None, rec)
        return rec.store.pop(name)[0]

    def values(self, layer: int) -> torch.Tensor:
        """[T, K, d] value vectors of the K key/value heads."""
        return self.get(f"blocks.{layer}.attn.hook_v")

    def head_vectors(self, layer: int) -> torch.Tensor:
        """[T, H, D]: u[j, h] = v^h_j @ W_O^h, what head h would write from source j at weight 1.

        GQA/MQA: query head h reads key/value head h // (H / K).
        """
        v = self.values(layer)  # [T, K, d]
        group = self.n_heads // v.shape[1]
        if group > 1:
            v = v.repeat_interleave(group, dim=1)
        w_o = self.attn_weight(layer)  # [H, d, D]
        return torch.einsum("thd,hdD->thD", v, w_o)

    def block(self, layer: int) -> Block:
        block = self.model.blocks[layer]
        assert isinstance(block, Block)
        return block

    def attn_weight(self, layer: int) -> torch.Tensor:
        """[H, d, D]."""
        return self.block(layer).attn.W_O.detach().float().cpu()

    def attn_bias(self, layer: int) -> torch.Tensor | None:
        b = self.block(layer).attn.b_O
        return None if b is None else b.detach().float().cpu()

    # ---- MLP ---------------------------------------------------------------------------------
    def mlp_out(self, layer: int) -> torch.Tensor:
        """[T, D] MLP output including its output bias."""
        return self.get(f"blocks.{layer}.hook_mlp_out")

    def mlp_hidden(self, layer: int, position: int | None = None) -> torch.Tensor:
        """[T, M] hidden activations a_k (the input of W_out): recorded, or recomputed by the
        block's own norm and MLP from the residual it read (bit for bit the recorded ones).
        position: only that token's, [M] (recomputed alone: equal up to float rounding)."""
        name = f"blocks.{layer}.mlp.hook_post"
        mid = f"blocks.{layer}.hook_resid_mid"
        if name in self.trace or mid not in self.trace:
            return _row(self.get(name), position)
        block = self.block(layer)  # the whole batch, as in the forward: same matmul shapes
        if not self.parallel:
            x = self.trace[mid]
        elif layer == 0:
            x = self.trace["blocks.0.hook_resid_pre"]
        else:  # resid_pre = the previous block's resid_mid + mlp_out, as the block summed it
            prev = f"blocks.{layer - 1}."
            x = self.trace[prev + "hook_resid_mid"] + self.trace[prev + "hook_mlp_out"]
        if position is not None:
            x = x[self.batch : self.batch + 1, position][:, None]  # [1, 1, D]
        rec = TraceRecorder({name})
        with torch.no_grad():
            block.mlp(block.ln2(x), rec)
        hidden = rec.store[name][0 if position is not None else self.batch]
        hidden = hidden.detach().float().cpu()
        return hidden if position is None else hidden[0]

    def mlp_weight(self, layer: int) -> torch.Tensor:
        """[M, D]."""
        return self.block(layer).mlp.W_out.detach().float().cpu()

    def mlp_bias(self, layer: int) -> torch.Tensor | None:
        b = self.block(layer).mlp.b_out
        return None if b is None else b.detach().float().cpu()
