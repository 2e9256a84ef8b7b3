"""Hook points: named identity modules where an activation can be read or replaced.

The model places a `HookPoint` at each activation below (i = layer); its module path is its
name, the same name the trace uses (see `lmscope.model.trace`):
- `hook_embed` [b, T, D]: token embeddings;
- `blocks.i.hook_resid_pre`, `hook_attn_out`, `hook_resid_mid`, `hook_mlp_out`,
  `hook_resid_post` [b, T, D]: the residual stream and the block outputs added to it;
- `blocks.i.attn.hook_z` [b, T, H, d]: every head's mixed values, before W_O;
- `blocks.i.mlp.hook_post` [b, T, M]: the MLP's hidden activations, before W_out.

`run_with_hooks(model, tokens, fwd_hooks=[(name, fn)])` calls fn(activation, name) at each
named point; fn returns None (read only) or a tensor of the same shape that replaces the
activation for the rest of the pass. With no hook a HookPoint costs one attribute check, so
`forward` and the trace path stay bit-identical; hooks run on the reference path (the
prepacked path, if enabled, is set aside while they are registered).

Helpers build the usual interventions as (name, fn) pairs: zero or mean ablation of a head, a
neuron or a block's output, and activation patching from a cached clean run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from lmscope.model.config import ModelConfig
    from lmscope.model.transformer import Transformer

HookFn = Callable[[torch.Tensor, str], torch.Tensor | None]

LAYER_HOOKS = (
    "hook_resid_pre",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)


class HookError(ValueError):
    """A hook that cannot be applied: an unknown name or a replacement of the wrong shape."""


class HookPoint(nn.Module):
    """Identity; forward hooks registered on it may read or replace the activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # Skip nn.Module's call machinery unless a hook is registered (forward stays cheap).
        if self._forward_hooks or self._forward_pre_hooks:
            return super().__call__(x)
        return x


def hook_names(cfg: ModelConfig) -> list[str]:
    """Every hook point of a model with this config, in execution order."""
    return ["hook_embed"] + [f"blocks.{i}.{s}" for i in range(cfg.n_layers) for s in LAYER_HOOKS]


def hook_point(model: Transformer, name: str) -> HookPoint:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        module = None
    if not isinstance(module, HookPoint):
        cfg = model.cfg
        raise HookError(
            f"unknown hook {name!r}; valid hooks are hook_embed and blocks.<0..{cfg.n_layers - 1}>."
            f"{{{', '.join(LAYER_HOOKS)}}}"
        )
    return module


@contextmanager
def hooks(model: Transformer, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
    """Register `fwd_hooks` for the duration of the block (see the module docstring)."""
    points = [(hook_point(model, name), name, fn) for name, fn in fwd_hooks]
    handles = []
    stash = model._prepacked
    model._prepacked = None  # hooks run on the reference path only
    try:
        for point, name, fn in points:
            handles.append(point.register_forward_hook(_wrap(name, fn)))
        yield
    finally:
        for h in handles:
            h.remove()
        model._prepacked = stash


def _wrap(name: str, fn: HookFn) -> Callable[[nn.Module, Any, torch.Tensor], torch.Tensor | None]:
    def hook(_module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor | None:
        new = fn(output, name)
        if new is None:
            return None
        if not isinstance(new, torch.Tensor) or new.shape != output.shape:
            shape = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
            raise HookError(
                f"the hook on {name} returned {shape} but the activation has shape "
                f"{tuple(output.shape)}; return a tensor of the same shape (or None to only read)"
            )
        return new.to(output.dtype)

    return hook


def run_with_hooks(
    model: Transformer,
    tokens: torch.Tensor,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
    **forward_kwargs: Any,
) -> torch.Tensor:
    """Logits of `model(tokens, **forward_kwargs)` with `fwd_hooks` applied."""
    with hooks(model, fwd_hooks):
        return model(tokens, **forward_kwargs)


def cache_activations(
    model: Transformer, tokens: torch.Tensor, names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """The activations at `names` on `tokens` (detached), e.g. from a clean run to patch in."""
    store: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, name: str) -> None:
        store[name] = x.detach().clone()

    with torch.no_grad():
        run_with_hooks(model, tokens, [(n, keep) for n in names])
    return store


def _check_index(index: int, size: int, what: str) -> None:
    if not 0 <= index < size:
        raise HookError(f"{what} {index} does not exist; use 0..{size - 1}")


def ablate_head(layer: int, head: int, mean: torch.Tensor | None = None) -> tuple[str, HookFn]:
    """Zero head `head` of `layer` (its z, so its output is 0; b_O stays), or put `mean` [d]
    (e.g. its mean z over a reference run) in its place."""

    def fn(z: torch.Tensor, _name: str) -> torch.Tensor:
        _check_index(head, z.shape[2], "head")
        z = z.clone()
        z[:, :, head] = 0.0 if mean is None else mean.to(z)
        return z

    return f"blocks.{layer}.attn.hook_z", fn


def ablate_neuron(
    layer: int, neuron: int, mean: torch.Tensor | float | None = None
) -> tuple[str, HookFn]:
    """Zero (or set to `mean`) the hidden activation of one MLP neuron."""

    def fn(post: torch.Tensor, _name: str) -> torch.Tensor:
        _check_index(neuron, post.shape[-1], "neuron")
        post = post.clone()
        post[..., neuron] = 0.0 if mean is None else mean
        return post

    return f"blocks.{layer}.mlp.hook_post", fn


def ablate_block(
    layer: int, part: str = "mlp", mean: torch.Tensor | None = None
) -> tuple[str, HookFn]:
    """Zero (or replace by `mean` [D]) the whole output of a block's attention or MLP."""
    if part not in ("attn", "mlp"):
        raise HookError(f"part must be 'attn' or 'mlp', got {part!r}")

    def fn(out: torch.Tensor, _name: str) -> torch.Tensor:
        return torch.zeros_like(out) if mean is None else mean.to(out).expand_as(out).clone()

    return f"blocks.{layer}.hook_{part}_out", fn


def patch(
    name: str, clean: torch.Tensor, positions: Sequence[int] | None = None
) -> tuple[str, HookFn]:
    """Activation patching: write `clean` (from `cache_activations` on the clean prompt, same
    shape) into the activation at `name`, at every position or only at `positions`."""

    def fn(x: torch.Tensor, _name: str) -> torch.Tensor:
        if clean.shape != x.shape:
            raise HookError(
                f"the patch for {name} has shape {tuple(clean.shape)} but the activation has "
                f"shape {tuple(x.shape)}; patch between prompts of the same length"
            )
        if positions is None:
            return clean
        x = x.clone()
        x[:, list(positions)] = clean[:, list(positions)].to(x)
        return x

    return name, fn
