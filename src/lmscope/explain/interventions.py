"""Interventions on the canonical model through torch forward pre-hooks (no change to the model).

Two tensors are intervened on, both the input of an output projection, where each component
still has its own slice:
- a head: z [b, T, H * d_head], the input of `blocks[l].attn.out` (head h is slice h);
- a neuron: the MLP hidden [b, T, d_mlp], the input of `blocks[l].mlp.fc_out`.
A whole MLP block is ablated by ablating all of its neurons (its output bias stays, as a head
ablation leaves b_O). Zero ablation puts 0 there; mean ablation puts the component's mean over
the prompt's positions (from a clean run, `record_inputs`). Activation patching writes the value
recorded on another prompt (same length) instead.

Hooks only run on the reference path, so `intervening` sets the prepacked path aside (if
enabled) for the duration and restores it after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from lmscope.explain.errors import ExplainInputError
from lmscope.model.transformer import Block, Transformer

# module -> (columns of its input, value to write or None for zeros, batch row or None for all)
Edits = dict[nn.Module, list[tuple[slice, torch.Tensor | None, int | None]]]


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


def block(model: Transformer, layer: int) -> Block:
    if not 0 <= layer < model.cfg.n_layers:
        raise ExplainInputError(
            f"layer {layer} does not exist; the model has layers 0..{model.cfg.n_layers - 1}"
        )
    b = model.blocks[layer]
    assert isinstance(b, Block)
    return b


def site(model: Transformer, component: Component) -> tuple[nn.Module, slice]:
    """The module whose input holds `component`, and its slice of the last dimension."""
    b = block(model, component.layer)
    if component.kind == "head":
        d, n = model.cfg.head_dim, model.cfg.n_heads
        if not 0 <= component.index < n:
            raise ExplainInputError(f"head {component.index} does not exist; heads are 0..{n - 1}")
        return b.attn.out, slice(component.index * d, (component.index + 1) * d)
    if component.kind == "neuron":
        m = model.cfg.mlp_dim
        if not 0 <= component.index < m:
            raise ExplainInputError(
                f"neuron {component.index} does not exist; neurons are 0..{m - 1}"
            )
        return b.mlp.fc_out, slice(component.index, component.index + 1)
    if component.kind == "mlp":
        return b.mlp.fc_out, slice(None)
    raise ExplainInputError(
        f"unknown component kind {component.kind!r}; use 'head', 'neuron' or 'mlp'"
    )


@contextlib.contextmanager
def intervening(model: Transformer, edits: Edits) -> Iterator[None]:
    """Apply edits while the block runs: for each module, (slice, value, row) triples write
    `value` (broadcast to [rows, T, width]; None = zeros) into that slice of the module's input,
    in batch row `row` (None = every row)."""
    handles = []

    def make_hook(
        plan: list[tuple[slice, torch.Tensor | None, int | None]],
    ) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            x = args[0].clone()
            for cols, value, row in plan:
                rows = slice(None) if row is None else slice(row, row + 1)
                x[rows, :, cols] = 0.0 if value is None else value.to(x.dtype)
            return (x, *args[1:])

        return hook

    stash = model._prepacked  # the reference path only: hooks do not run on the packed one
    model._prepacked = None
    try:
        for module, plan in edits.items():
            handles.append(module.register_forward_pre_hook(make_hook(plan)))
        yield
    finally:
        for h in handles:
            h.remove()
        model._prepacked = stash


def record_inputs(model: Transformer, tokens: torch.Tensor, layers: list[int]) -> dict[str, list]:
    """Inputs of every `attn.out` and `mlp.fc_out` of `layers` on `tokens` [1, T] (one run):
    {"head": [z per layer], "neuron": [hidden per layer]}, each [1, T, width]."""
    out: dict[str, list] = {
        "head": [None] * model.cfg.n_layers,
        "neuron": [None] * model.cfg.n_layers,
    }
    handles = []

    def keep(kind: str, layer: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            out[kind][layer] = args[0].detach().clone()

        return hook

    stash = model._prepacked
    model._prepacked = None
    try:
        for layer in layers:
            b = block(model, layer)
            handles.append(b.attn.out.register_forward_pre_hook(keep("head", layer)))
            handles.append(b.mlp.fc_out.register_forward_pre_hook(keep("neuron", layer)))
        with torch.no_grad():
            model(tokens)
    finally:
        for h in handles:
            h.remove()
        model._prepacked = stash
    return out


def ablation_edits(
    model: Transformer,
    components: list[Component],
    mode: str = "zero",
    clean: dict[str, list] | None = None,
) -> Edits:
    """Edits that zero- or mean-ablate `components` in every batch row. Mean ablation needs the
    clean run's inputs (`record_inputs`)."""
    if mode not in ("zero", "mean"):
        raise ExplainInputError(f"ablation mode must be 'zero' or 'mean', got {mode!r}")
    edits: Edits = {}
    for c in components:
        module, cols = site(model, c)
        value = None
        if mode == "mean":
            if clean is None:
                raise ExplainInputError("mean ablation needs the clean run's activations")
            kind = "head" if c.kind == "head" else "neuron"
            value = clean[kind][c.layer][..., cols].mean(1, keepdim=True)
        edits.setdefault(module, []).append((cols, value, None))
    return edits
