"""The prepacked path: a lean CPU inference path for float32 models, weights prepacked once
for oneDNN.

The model has three paths, each with one name: `Transformer.forward` is the reference path,
this module is the prepacked path (`Transformer.enable_prepacked`, `optimize_for_decoding`),
and `Transformer.run_with_trace` is the trace path.

The reference path is written for clarity and for every dtype and device; on a CPU its
one-token decoding step is bound by two things this module removes:

- **Weight layout.** A BLAS call repacks the weight on every call when more than one row is
  multiplied (batched decoding), so each step reads all weights twice. Here each projection is
  reordered once into oneDNN's blocked layout (`mkldnn._reorder_linear_weight`, the same op
  `torch.compile`'s CPU backend uses when it freezes weights); a step then streams each weight
  once, for one row or eight, and both CPU threads share the work.
- **Per-op overhead.** A decoding step runs ~2,000 tiny tensor ops; each costs microseconds
  of dispatch. Norm weights (and the sqrt(d_model) of RMSNorm) are folded into the next
  projection, residual adds are fused into the output projections, RoPE is three ops for
  queries and keys together, and non-gated activations are fused into the MLP input
  projection: about a third of the ops remain.

Values agree with the reference path to float32 rounding (tested to 1e-4 on logits); the path
is used only without autograd and in eval mode, and is dropped as soon as any parameter
changes (training, `load_state_dict`, `.to()`): the reference path then answers.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from lmscope.model.cache import KVCache, SlotKVCache

if TYPE_CHECKING:
    from lmscope.model.transformer import Block, Rope, Transformer

_ONEDNN_ACTIVATIONS = {  # our activation name -> oneDNN post-op (attr, algorithm)
    "gelu": ("gelu", "none"),
    "gelu_tanh": ("gelu", "tanh"),
    "relu": ("relu", ""),
    "silu": ("swish", ""),
}


class FastLinear(Protocol):
    """A projection of the fast paths: `y = linear(x)`, and `add_to` for `residual + y`."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def add_to(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor: ...


class LinearFactory(Protocol):
    """Builds a FastLinear from an nn.Linear, with a norm's affine part folded in (see
    PackedLinear) and an optional fused activation (only where the MLP is not gated)."""

    def __call__(
        self,
        linear: nn.Linear,
        *,
        scale: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
        activation: str = "none",
    ) -> FastLinear: ...


def onednn_available() -> bool:
    """True where oneDNN's prepacked linear ops exist and give the right answer."""
    try:
        ops = torch.ops.mkldnn
        weight = torch.linspace(-1, 1, 24).reshape(6, 4)
        x = torch.linspace(0.5, -0.5, 8).reshape(2, 4)
        packed = ops._reorder_linear_weight(weight)
        got = ops._linear_pointwise(x, packed, None, "none", [], "")
        return bool(torch.allclose(got, F.linear(x, weight), atol=1e-5))
    except (AttributeError, RuntimeError):
        return False


class PackedLinear:
    """y = x @ W'.T + b' with W' prepacked, where an input affine map (a norm's weight and
    bias) can be folded in: W' = W * scale, b' = b + W @ shift."""

    def __init__(
        self,
        linear: nn.Linear,
        *,
        scale: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
        activation: str = "none",
    ) -> None:
        weight = linear.weight.detach().float()
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        if shift is not None:
            folded = weight @ shift.detach().float()
            bias = folded if bias is None else bias + folded
        if scale is not None:
            weight = weight * scale.detach().float()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous())
        self.bias = bias
        self.attr, self.algorithm = (
            ("none", "") if activation == "none" else _ONEDNN_ACTIVATIONS[activation]
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(
            x, self.weight, self.bias, self.attr, [], self.algorithm
        )

    def add_to(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """residual + linear(x), in one kernel."""
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.weight, self.bias, "add")


class _Norm:
    """The normalisation half of a norm layer; its affine part lives in the next PackedLinear."""

    def __init__(self, norm: nn.Module, d_model: int) -> None:
        self.rms = not isinstance(norm, nn.LayerNorm)
        self.eps = float(getattr(norm, "eps", 1e-5))
        self.d_model = d_model
        # RMSNorm: x / sqrt(mean(x^2) + eps) = sqrt(D) * x / hypot(|x|, sqrt(D * eps)).
        self.floor = torch.tensor(math.sqrt(d_model * self.eps))
        weight: torch.Tensor | None = getattr(norm, "weight", None)
        scale = torch.ones(d_model) if weight is None else weight.detach()
        self.scale = scale * math.sqrt(d_model) if self.rms else scale
        self.shift: torch.Tensor | None = getattr(norm, "bias", None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.rms:
            return x / torch.hypot(torch.linalg.vector_norm(x, dim=-1, keepdim=True), self.floor)
        return F.layer_norm(x, (self.d_model,), None, None, self.eps)

    def folded_into(
        self, linear: nn.Linear, make: LinearFactory, activation: str = "none"
    ) -> FastLinear:
        """The projection that reads this norm's output, with the norm's affine part folded in."""
        return make(linear, scale=self.scale, shift=self.shift, activation=activation)


class _Layer:
    def __init__(self, block: Block, activation: str, make: LinearFactory) -> None:
        attn, mlp = block.attn, block.mlp
        d_model = attn.qkv.in_features
        self.index = block.layer
        self.norm1 = _Norm(block.ln1, d_model)
        self.norm2 = _Norm(block.ln2, d_model)
        self.qkv = self.norm1.folded_into(attn.qkv, make)
        self.out = make(attn.out)
        self.gated = mlp.gated
        self.act = mlp.act
        self.fc_in = self.norm2.folded_into(mlp.fc_in, make, "none" if mlp.gated else activation)
        self.fc_out = make(mlp.fc_out)
        self.d_mlp = mlp.d_mlp
        self.parallel = block.parallel


class PrepackedPath:
    """Prepacked float32 weights of one Transformer and the lean forward that uses them.

    `make_linear` builds each projection (float32 oneDNN here; `lmscope.model.quantized`
    passes int8 ones), `make_unembed` the unembedding (default: the same).
    """

    name = "prepacked"

    def __init__(
        self,
        model: Transformer,
        make_linear: LinearFactory = PackedLinear,
        make_unembed: LinearFactory | None = None,
    ) -> None:
        cfg = model.cfg
        self.heads, self.kv_heads, self.d_head = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.gqa = cfg.kv_heads != cfg.n_heads
        self.layers = [_Layer(block, cfg.activation, make_linear) for block in model.blocks]  # type: ignore[arg-type]
        self.norm_final = _Norm(model.ln_final, cfg.d_model)
        self.unembed = self.norm_final.folded_into(model.unembed, make_unembed or make_linear)
        self.rotary = cfg.rotary_dim if cfg.positional == "rope" else 0
        # rotate_half(x) * sin == flip(x as [2, half]) * [-sin | +sin]
        self.sin_sign = torch.tensor([[-1.0], [1.0]])
        # Where each parameter is read from, to tell cheaply (~40 us) whether any changed.
        self._parameter_slots = [
            (module._parameters, name)
            for module in model.modules()
            for name, param in module._parameters.items()
            if param is not None
        ]
        self.signature = self._signature()

    def is_current(self) -> bool:
        """False once any parameter was replaced, moved or modified in place since packing."""
        return self._signature() == self.signature

    def _signature(self) -> list[tuple[int, int, int]]:
        return [
            (id(param), param.data_ptr(), param._version)
            for params, name in self._parameter_slots
            if (param := params[name]) is not None
        ]

    def blocks(
        self,
        x: torch.Tensor,
        rope: Rope | None,
        mask: torch.Tensor | None,
        cache: KVCache | SlotKVCache | None,
    ) -> torch.Tensor:
        """The block stack on what `Transformer.forward` prepared: x [b, T, D] -> [b, T, D]."""
        pairs = None
        if rope is not None and self.rotary:
            cos, sin = (t.transpose(1, 2).unflatten(-1, (2, -1)) for t in rope)  # [b, T, 1, 2, r/2]
            pairs = cos, sin * self.sin_sign
        for layer in self.layers:
            x = self._block(layer, x, pairs, mask, cache)
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and unembedding (the norm's weights folded in): [b, T, D] -> [b, T, V]."""
        return self.unembed(self.norm_final(x))

    def _block(
        self,
        layer: _Layer,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
        cache: KVCache | SlotKVCache | None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        heads, kv = self.heads, self.kv_heads
        qkv = layer.qkv(layer.norm1(x)).view(b, t, heads + 2 * kv, self.d_head)
        if rope is not None:  # rotate queries and keys in place, inside the qkv buffer
            pairs = qkv[:, :, : heads + kv, : self.rotary].unflatten(-1, (2, -1))
            cos, sin = rope
            torch.addcmul(pairs * cos, pairs.flip(-2), sin, out=pairs)
        q = qkv[:, :, :heads].transpose(1, 2)
        k = qkv[:, :, heads : heads + kv].transpose(1, 2)
        v = qkv[:, :, heads + kv :].transpose(1, 2)
        if cache is not None:
            k, v = cache.update(layer.index, k, v)
        z = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and t > 1, enable_gqa=self.gqa
        )
        z = z.transpose(1, 2).reshape(b, t, heads * self.d_head)
        mid = layer.out.add_to(z, x)
        hidden = layer.fc_in(layer.norm2(x if layer.parallel else mid))
        if layer.gated:
            hidden = layer.act(hidden[..., : layer.d_mlp]) * hidden[..., layer.d_mlp :]
        return layer.fc_out.add_to(hidden, mid)


def optimize_for_decoding(model: Transformer) -> Transformer:
    """Prepack a float32 CPU model's weights for fast generation, in place; returns the model.

    About 1.5x faster single-stream and 2.5x faster batched decoding on a 2-core AVX2 machine
    (see bench/model_speed.py). Parameters, state_dict and the trace path are untouched; other
    dtypes and devices are left as they are. Safe to call twice.
    """
    model.enable_prepacked()
    return model
