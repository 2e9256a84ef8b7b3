"""The quantized path: int8 weights, quantized once at load, for CPU inference.

The third inference path next to the reference and prepacked ones (see
`lmscope.model.prepacked`): the same lean block code, with every projection replaced by
torch's dynamic int8 linear (`torch.ops.quantized.linear_dynamic` on fbgemm/oneDNN prepacked
weights, the kernel `torch.ao.nn.quantized.dynamic.Linear` runs). Weights are int8 with one
symmetric scale per output channel, quantized after the norm weights are folded in;
activations are quantized per call by the kernel (per tensor, 7-bit with `reduce_range` so
AVX2 machines without VNNI cannot saturate). A decoding step then streams a quarter of the
float32 bytes.

What is served can be explained: `dequantized_copy(model)` is an ordinary float32
Transformer holding exactly the dequantised weights (and the biases the folding produced);
only the run-time rounding of activations is not in it.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from lmscope.model.config import ConfigError
from lmscope.model.layers import ACTIVATIONS
from lmscope.model.prepacked import PrepackedPath

if TYPE_CHECKING:
    from lmscope.model.transformer import Transformer

QUANTIZE_MODES = ("int8",)
# Outlier input channels (LLM.int8()'s decomposition): a projection whose calibrated input has a
# channel OUTLIER_SPREAD times the median channel's largest value computes the channels above
# OUTLIER_FACTOR times the median (at most MAX_OUTLIERS) in float32 beside the int8 kernel.
# Massive activations in the residual stream dominate a token's normalised input, and a few MLP
# neurons reach 7,800x the median. On SmolLM2 (WikiText-2, 30,000 characters) this keeps 1,391
# channels of 102 of 121 projections in float32 (about 6% more bytes per token) and takes bits
# per byte from +1.45% to +0.31% of float32; weight rounding alone costs +0.32%.
OUTLIER_SPREAD, OUTLIER_FACTOR, MAX_OUTLIERS = 6.0, 4.0, 32


class QuantizationError(ConfigError):
    """A model, dtype, device or mode the quantized kernels do not support (a user error)."""


def _reduce_range() -> bool:
    """7-bit activations where the kernel's u8*s8 pair sums could saturate int16 (x86 without
    VNNI); full 8 bits with AVX-512 (VNNI) or on other CPUs."""
    capability = torch.backends.cpu.get_cpu_capability()
    return capability.startswith("AVX2") or capability == "DEFAULT"


REDUCE_RANGE = _reduce_range()


def quantized_engine_available() -> bool:
    """True where torch's dynamic int8 linear exists and gives the right answer."""
    try:
        weight = torch.linspace(-1, 1, 24).reshape(6, 4)
        x = torch.linspace(0.5, -0.5, 8).reshape(2, 4)
        got = _Int8Linear(_linear(weight))
        return bool(torch.allclose(got(x), x @ weight.T, atol=0.05))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _linear(weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False).requires_grad_(False)
    linear.weight.copy_(weight)
    return linear


def _quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 values and one symmetric scale per row (output channel): weight ~ q * scale."""
    scale = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12)
    q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def outlier_channels(input_absmax: torch.Tensor | None) -> torch.Tensor | None:
    """The input channels to keep in float32, from each channel's largest calibrated |x|."""
    if input_absmax is None:
        return None
    median = input_absmax.median().clamp(min=1e-12)
    if input_absmax.max() < OUTLIER_SPREAD * median:
        return None
    idx = torch.nonzero(input_absmax > OUTLIER_FACTOR * median).flatten()
    if idx.numel() > MAX_OUTLIERS:
        idx = input_absmax.topk(MAX_OUTLIERS).indices.sort().values
    return idx


class _Int8Linear:
    """One projection on the dynamic int8 kernel, activations quantized per token (rows are
    brought to one range first, since the kernel takes one scale per call), outlier channels in
    float32. `served_weight()` is the float32 weight it computes with (dequantised, the norm's
    scale divided back out); a folded norm bias goes through it, so the unfolded float32 model
    with this weight gives the same sums."""

    def __init__(
        self,
        linear: nn.Linear,
        *,
        scale: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
        activation: str = "none",
        outliers: torch.Tensor | None = None,
    ) -> None:
        weight = linear.weight.detach().float()
        norm_scale = None if scale is None else scale.detach().float()
        self.norm_scale = norm_scale
        folded = weight if norm_scale is None else weight * norm_scale
        self.outliers = outliers
        self.outlier_weight = torch.empty(0)
        if outliers is not None:
            self.outlier_weight = folded[:, outliers].T.contiguous()  # [k, out]
            folded = folded.index_fill(1, outliers, 0.0)
        # Columns a zero norm weight silences: any weight serves; the copy keeps the original.
        self.dead = None if norm_scale is None else torch.nonzero(norm_scale == 0).flatten()
        self.dead_weight = weight[:, self.dead] if self.dead is not None else torch.empty(0)
        q, row_scale = _quantize_rows(folded)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        if shift is not None:  # fold the norm's bias through the weights actually served
            extra = self._served(q.float() * row_scale[:, None]) @ shift.detach().float()
            bias = extra if bias is None else bias + extra
        self.bias = bias
        zeros = torch.zeros(q.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensors are deprecated; the kernels are not
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch._make_per_channel_quantized_tensor(q, row_scale.double(), zeros, 0)
            self.packed = torch.ops.quantized.linear_prepack(qweight, None)
        self.act = None if activation == "none" else ACTIVATIONS[activation]

    def _served(self, dequantized: torch.Tensor) -> torch.Tensor:
        served = dequantized
        if self.outliers is not None:
            served[:, self.outliers] = self.outlier_weight.T
        if self.norm_scale is not None:
            s = self.norm_scale
            served = served / torch.where(s != 0, s, 1)
            if self.dead is not None and self.dead.numel():
                served[:, self.dead] = self.dead_weight
        return served

    def served_weight(self) -> torch.Tensor:
        """The float32 weight this projection computes with, unpacked on demand (no float
        copy is kept beside the int8 one)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            qweight, _ = torch.ops.quantized.linear_unpack(self.packed)
            scales = qweight.q_per_channel_scales().float()
            return self._served(qweight.int_repr().float() * scales[:, None])

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        if self.outliers is None and x.numel() == x.shape[-1]:  # one token: the decoding step
            y = torch.ops.quantized.linear_dynamic(x, self.packed, REDUCE_RANGE)
            return y if self.bias is None else y.add_(self.bias)
        rows = x.reshape(-1, x.shape[-1])
        picked = None
        if self.outliers is not None:
            picked = rows.index_select(1, self.outliers)
            rows = rows.index_fill(1, self.outliers, 0.0)
        if rows.shape[0] == 1:
            y = torch.ops.quantized.linear_dynamic(rows, self.packed, REDUCE_RANGE)
        else:  # one quantization range per token
            norm = rows.abs().amax(1, keepdim=True).clamp_(min=1e-30)
            y = torch.ops.quantized.linear_dynamic(rows / norm, self.packed, REDUCE_RANGE)
            y.mul_(norm)
        if picked is not None:
            y.addmm_(picked, self.outlier_weight)
        if self.bias is not None:
            y.add_(self.bias)
        return y.view(*x.shape[:-1], y.shape[-1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self._linear(x)
        return y if self.act is None else self.act(y)

    def add_to(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self._linear(x).add_(residual)


class _Recorder:
    """A float32 projection (norm folded as on the fast paths) that records the largest |x|
    of each input channel it sees: calibration for `outlier_channels`."""

    def __init__(
        self,
        linear: nn.Linear,
        *,
        scale: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
        activation: str = "none",
        seen: dict[int, torch.Tensor],
    ) -> None:
        self.key, self.seen = id(linear), seen
        weight = linear.weight.detach().float()
        self.weight = weight if scale is None else weight * scale.detach().float()
        bias = None if linear.bias is None else linear.bias.detach().float()
        if shift is not None:
            bias = weight @ shift.detach().float() + (0 if bias is None else bias)
        self.bias = bias
        self.act = None if activation == "none" else ACTIVATIONS[activation]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        absmax = x.reshape(-1, x.shape[-1]).abs().amax(0)
        old = self.seen.get(self.key)
        self.seen[self.key] = absmax if old is None else torch.maximum(old, absmax)
        y = F.linear(x, self.weight, self.bias)
        return y if self.act is None else self.act(y)

    def add_to(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self(x) + residual


def calibrate(model: Transformer, tokens: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
    """Largest |input| per channel of every projection (keyed by id of its nn.Linear) over
    `tokens` (default: 2 x 64 seeded random tokens; outlier channels are a property of the
    weights and show on any text, the first position included)."""
    if tokens is None:
        generator = torch.Generator().manual_seed(0)
        length = min(64, model.cfg.n_ctx)
        tokens = torch.randint(0, model.cfg.vocab_size, (2, length), generator=generator)
    seen: dict[int, torch.Tensor] = {}

    def record(linear: nn.Linear, **options: Any) -> _Recorder:
        return _Recorder(linear, seen=seen, **options)

    was_training, previous = model.training, model._prepacked
    model.eval()
    model._prepacked = PrepackedPath(model, make_linear=record)
    try:
        with torch.inference_mode():
            model(tokens)
    finally:
        model._prepacked = previous
        model.train(was_training)
    return seen


class QuantizedPath(PrepackedPath):
    """int8 weights of one Transformer and the prepacked path's lean forward using them."""

    name = "int8"

    def __init__(self, model: Transformer, calibration: torch.Tensor | None = None) -> None:
        seen = calibrate(model, calibration)

        def make(linear: nn.Linear, **options: Any) -> _Int8Linear:
            return _Int8Linear(linear, outliers=outlier_channels(seen.get(id(linear))), **options)

        super().__init__(model, make_linear=make)
        self.mode = "int8"
        projections = [self.unembed]
        for layer in self.layers:
            projections += [layer.qkv, layer.out, layer.fc_in, layer.fc_out]
        self.outlier_projections = sum(fast.outliers is not None for fast in projections)  # type: ignore[attr-defined]


SUPPORTED = "int8 weights for float32 models on a CPU (torch's fbgemm/oneDNN/qnnpack kernels)"


def check_quantize_mode(mode: str, dtype: str = "float32", device: str = "cpu") -> None:
    """Raise QuantizationError, naming what is supported, unless `mode` can run for a model of
    this dtype on this device (checked before anything is loaded)."""
    if mode not in QUANTIZE_MODES:
        raise QuantizationError(
            f"cannot quantize to {mode!r}: supported is {SUPPORTED}; "
            f"choose --quantize {' or '.join(QUANTIZE_MODES)}"
        )
    if device != "cpu" or dtype != "float32":
        raise QuantizationError(
            f"cannot quantize a {dtype} model on {device}: supported is {SUPPORTED}; "
            "load it as float32 on the CPU, or drop --quantize"
        )


def check_quantizable(model: Transformer, mode: str) -> None:
    """Raise QuantizationError, naming what is supported, unless `mode` can run on `model`."""
    check_quantize_mode(mode, str(model.dtype).removeprefix("torch."), model.device.type)
    if not quantized_engine_available():
        raise QuantizationError(
            f"this torch build has no working quantized linear kernels "
            f"(engines: {torch.backends.quantized.supported_engines}); drop --quantize"
        )


def quantize_for_decoding(
    model: Transformer, mode: str = "int8", calibration: torch.Tensor | None = None
) -> Transformer:
    """Quantize a float32 CPU model's projections for inference, in place; returns the model.

    Parameters, state_dict, training and the trace path keep the float32 weights; `forward`
    answers from the int8 weights in eval mode without autograd, until a parameter changes.
    """
    check_quantizable(model, mode)
    with torch.no_grad():
        # The fast path slot of Transformer (see Transformer.enable_prepacked); QuantizedPath
        # has PrepackedPath's interface, so `forward` hands it the prepared inputs the same way.
        model._prepacked = QuantizedPath(model, calibration)
    return model


def quantized_path(model: Transformer) -> QuantizedPath | None:
    """The model's current quantized path, if it is serving int8 weights."""
    path = model._prepacked
    if isinstance(path, QuantizedPath) and path.is_current():
        return path
    return None


def dequantized_copy(model: Transformer) -> Transformer:
    """A float32 copy holding the weights `model` serves: its dequantised int8 weights (so
    explanations explain them), or a plain copy if it is not quantized. The copy has no fast
    path; the embedding stays float32, as served (a tied unembedding is untied)."""
    path = quantized_path(model)
    twin = copy.deepcopy(model)  # Transformer.__getstate__ leaves the packed path behind
    if path is not None:
        _load_all_served(path, twin)
    return twin


def adopt_served_weights(model: Transformer) -> Transformer:
    """Give a quantized model's own parameters the dequantised weights its int8 path serves,
    in place, keeping the int8 path: the reference and trace paths (explanations) then compute
    with the served weights, without a second float32 copy (what the server does)."""
    path = quantized_path(model)
    if path is None:
        raise QuantizationError("adopt_served_weights needs a model quantized for decoding")
    _load_all_served(path, model)
    path.signature = path._signature()  # the parameters changed on purpose: still current
    return model


def _load_all_served(path: QuantizedPath, target: Transformer) -> None:
    with torch.no_grad():
        for layer, block in zip(path.layers, target.blocks, strict=True):
            pairs = (
                (layer.qkv, block.attn.qkv),  # type: ignore[union-attr]
                (layer.out, block.attn.out),  # type: ignore[union-attr]
                (layer.fc_in, block.mlp.fc_in),  # type: ignore[union-attr]
                (layer.fc_out, block.mlp.fc_out),  # type: ignore[union-attr]
            )
            for fast, linear in pairs:
                _load_served(fast, linear)  # type: ignore[arg-type]
        _load_served(path.unembed, target.unembed)  # type: ignore[arg-type]


def _load_served(fast: _Int8Linear, linear: nn.Module) -> None:
    """Give `linear` the served weight (biases stay: the norms are not folded in the copy)."""
    assert isinstance(linear, nn.Linear)
    linear.weight = nn.Parameter(fast.served_weight())


def served_for_explaining(loaded: Any, mode: str) -> Any:
    """A LoadedModel-like object (name, model, ...) whose model holds the weights served
    after quantizing to `mode` (dequantised) and whose name says so, e.g.
    "smollm2-135m (int8, dequantized)". Quantizes `loaded.model` in place."""
    model = dequantized_copy(quantize_for_decoding(loaded.model, mode))
    return dataclasses.replace(loaded, model=model, name=f"{loaded.name} ({mode}, dequantized)")
