"""Traces: the internal quantities of one forward pass, under TransformerLens-style names.

Recorded names (i = layer):
- `hook_embed` [b, T, D] token embeddings; `hook_pos_embed` [b, T, D] (learned/sinusoidal only)
- `blocks.i.hook_resid_pre` [b, T, D]: residual stream entering block i
- `blocks.i.ln1.hook_normalized`, `blocks.i.ln2.hook_normalized` [b, T, D]: norm outputs
- `blocks.i.attn.hook_q` [b, T, H, d], `hook_k`, `hook_v` [b, T, K, d] (before RoPE; K = kv heads)
- `blocks.i.attn.hook_rot_q`, `hook_rot_k` (after RoPE; opt-in)
- `blocks.i.attn.hook_attn_scores` [b, H, T, T] (opt-in), `hook_pattern` [b, H, T, T]
- `blocks.i.attn.hook_z` [b, T, H, d]: per-head mixed values, before W_O
- `blocks.i.attn.hook_result` [b, T, H, D]: per-head outputs z_h @ W_O[h], before the sum over
  heads and without the output bias
- `blocks.i.hook_attn_out` [b, T, D] (= sum_h result + b_O)
- `blocks.i.hook_resid_mid` [b, T, D] = resid_pre + attn_out (in parallel blocks too, where the MLP
  reads resid_pre instead)
- `blocks.i.mlp.hook_pre` [b, T, M] (gate pre-activation when gated), `hook_pre_linear` (gated: up),
  `hook_post` [b, T, M]: hidden activations, the input of W_out
- `blocks.i.hook_mlp_out` [b, T, D], `blocks.i.hook_resid_post` [b, T, D]
- `ln_final.hook_normalized` [b, T, D]: final-norm output (its input is the last resid_post)
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from lmscope.model.config import ModelConfig

OPT_IN_SUFFIXES = ("hook_attn_scores", "hook_rot_q", "hook_rot_k")


class TraceRecorder:
    """Collects named activations, keeping only the names asked for."""

    def __init__(self, names: Collection[str] | Callable[[str], bool] | None) -> None:
        self.store: dict[str, torch.Tensor] = {}
        if names is None:
            self._wants: Callable[[str], bool] = lambda n: not n.endswith(OPT_IN_SUFFIXES)
        elif callable(names):
            self._wants = names
        else:
            wanted = set(names)
            self._wants = wanted.__contains__

    def wants(self, name: str) -> bool:
        return self._wants(name)

    def __call__(self, name: str, tensor: torch.Tensor) -> None:
        if self._wants(name):
            self.store[name] = tensor


@dataclass
class Trace:
    """Tokens, logits and recorded activations of one traced forward pass."""

    tokens: torch.Tensor  # [b, T]
    logits: torch.Tensor  # [b, T, V]
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    cfg: ModelConfig | None = None

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.activations[name]
        except KeyError:
            available = ", ".join(sorted(self.activations)[:8])
            raise KeyError(
                f"trace has no activation {name!r}; it was not recorded (available: {available}, ...)"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.activations

    def __iter__(self) -> Iterator[str]:
        return iter(self.activations)

    def names(self) -> list[str]:
        return list(self.activations)

    @property
    def n_layers(self) -> int:
        assert self.cfg is not None
        return self.cfg.n_layers
