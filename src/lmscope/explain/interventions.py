"""Interventions on components of the canonical model, through its hook points
(`lmscope.model.hooks`): every head's z [b, T, H, d] at `blocks.l.attn.hook_z` and every
neuron's activation [b, T, M] at `blocks.l.mlp.hook_post`, where each component still has its
own slice (of the last dimensions flattened: head h is columns h*d..(h+1)*d).

A whole MLP block is ablated by ablating all of its neurons (its output bias stays, as a head
ablation leaves b_O). Zero ablation puts 0 there; mean ablation puts the component's mean over
the prompt's positions (from a clean run, `record_inputs`). Activation patching writes the value
recorded on another prompt (same length) instead, optionally in one batch row only, so that a
batch can patch a different component in each row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from lmscope.explain.errors import ExplainInputError
from lmscope.model.hooks import HookFn, cache_activations, hooks
from lmscope.model.transformer import Transformer

# hook name -> (columns, value to write or None for zeros, batch row or None for every row)
Edits = dict[str, list[tuple[slice, torch.Tensor | None, int | None]]]


@dataclass(frozen=True, slots=True)
class Component:
    """A head (`kind` "head", index = head), a neuron ("neuron", index = neuron) or a whole MLP
    block ("mlp", index unused) of `layer`."""

    kind: str
    layer: int
    index: int = 0

    @property
    def label(self) -> str:
        if self.kind == "head":
            return f"L{self.layer}H{self.index}"
        if self.kind == "neuron":
            return f"L{self.layer}N{self.index}"
        return f"L{self.layer}MLP"


def site(model: Transformer, component: Component) -> tuple[str, slice]:
    """The hook point holding `component`, and its columns of the flattened activation."""
    cfg, c = model.cfg, component
    if not 0 <= c.layer < cfg.n_layers:
        raise ExplainInputError(
            f"layer {c.layer} does not exist; the model has layers 0..{cfg.n_layers - 1}"
        )
    if c.kind == "head":
        d, n = cfg.head_dim, cfg.n_heads
        if not 0 <= c.index < n:
            raise ExplainInputError(f"head {c.index} does not exist; heads are 0..{n - 1}")
        return f"blocks.{c.layer}.attn.hook_z", slice(c.index * d, (c.index + 1) * d)
    if c.kind == "neuron":
        if not 0 <= c.index < cfg.mlp_dim:
            raise ExplainInputError(
                f"neuron {c.index} does not exist; neurons are 0..{cfg.mlp_dim - 1}"
            )
        return f"blocks.{c.layer}.mlp.hook_post", slice(c.index, c.index + 1)
    if c.kind == "mlp":
        return f"blocks.{c.layer}.mlp.hook_post", slice(None)
    raise ExplainInputError(f"unknown component kind {c.kind!r}; use 'head', 'neuron' or 'mlp'")


def _edit(plan: list[tuple[slice, torch.Tensor | None, int | None]]) -> HookFn:
    def fn(act: torch.Tensor, _name: str) -> torch.Tensor:
        flat = act.reshape(act.shape[0], act.shape[1], -1).clone()
        for cols, value, row in plan:
            rows = slice(None) if row is None else slice(row, row + 1)
            flat[rows, :, cols] = 0.0 if value is None else value.to(flat.dtype)
        return flat.view(act.shape)

    return fn


@contextlib.contextmanager
def intervening(model: Transformer, edits: Edits) -> Iterator[None]:
    """Apply `edits` to every forward pass of the model inside the block."""
    with hooks(model, [(name, _edit(plan)) for name, plan in edits.items()]):
        yield


def record_inputs(
    model: Transformer, tokens: torch.Tensor, layers: list[int]
) -> dict[str, torch.Tensor]:
    """Every head's z and every neuron's activation of `layers` on `tokens` [1, T] (one run),
    flattened to [1, T, width] under their hook names."""
    names = [f"blocks.{i}.{s}" for i in layers for s in ("attn.hook_z", "mlp.hook_post")]
    acts = cache_activations(model, tokens, names)
    return {n: a.reshape(a.shape[0], a.shape[1], -1) for n, a in acts.items()}


def ablation_edits(
    model: Transformer,
    components: list[Component],
    mode: str = "zero",
    clean: dict[str, torch.Tensor] | None = None,
) -> Edits:
    """Edits that zero- or mean-ablate `components` in every batch row. Mean ablation needs the
    clean run's activations (`record_inputs`)."""
    if mode not in ("zero", "mean"):
        raise ExplainInputError(f"ablation mode must be 'zero' or 'mean', got {mode!r}")
    edits: Edits = {}
    for c in components:
        name, cols = site(model, c)
        value = None
        if mode == "mean":
            if clean is None:
                raise ExplainInputError("mean ablation needs the clean run's activations")
            value = clean[name][..., cols].mean(1, keepdim=True)
        edits.setdefault(name, []).append((cols, value, None))
    return edits
