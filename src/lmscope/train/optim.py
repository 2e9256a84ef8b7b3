"""AdamW with weight-decay groups: matrices decay; biases, norm gains and (by default) embeddings
do not. Tied parameters appear once."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmscope.train.config import OptimSection

_EMBEDDING_NAMES = ("embed.weight", "pos_embed.weight")


@dataclass
class ParamGroups:
    decay: list[tuple[str, nn.Parameter]]
    no_decay: list[tuple[str, nn.Parameter]]

    @property
    def names(self) -> list[list[str]]:
        return [[n for n, _ in self.decay], [n for n, _ in self.no_decay]]


def is_embedding(name: str) -> bool:
    return any(name == e or name.endswith("." + e) for e in _EMBEDDING_NAMES)


def split_params(model: nn.Module, decay_embeddings: bool) -> ParamGroups:
    """Trainable parameters (requires_grad), split by whether weight decay applies."""
    groups = ParamGroups([], [])
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        decays = param.ndim >= 2 and (decay_embeddings or not is_embedding(name))
        (groups.decay if decays else groups.no_decay).append((name, param))
    return groups


def make_optimizer(groups: ParamGroups, section: OptimSection) -> torch.optim.AdamW:
    if not groups.decay and not groups.no_decay:
        raise ValueError("no trainable parameters: everything is frozen")
    params = [p for _, p in groups.decay + groups.no_decay]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    betas = (section.betas[0], section.betas[1])
    spec = [
        {"params": [p for _, p in groups.decay], "weight_decay": section.weight_decay},
        {"params": [p for _, p in groups.no_decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(spec, lr=section.lr, betas=betas, eps=section.eps, fused=fused)
