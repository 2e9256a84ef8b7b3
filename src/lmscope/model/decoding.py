"""Which inference path decodes: reference, prepacked or int8, chosen once at load.

The prepacked path is much faster than the reference path on some CPUs (1.66x transformers on
an AMD EPYC with AVX2) and slower on others (an Intel Xeon with AVX-512 and AMX, where PyTorch's
own BLAS already streams the weights well). Rather than guess from CPU flags, `prepare_for_decoding`
times a few cached decoding steps of each candidate at batch 1 and at the serving batch, on the
model itself, interleaved so that other work on the machine hits both alike, and keeps the
faster. int8 is a quality choice as much as a speed one, so it is never picked unasked, and
always used when asked for (it streams a quarter of the bytes: 3-4x the prepacked path here).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch

from lmscope.model.prepacked import PrepackedPath
from lmscope.model.quantized import check_quantizable, quantize_for_decoding

if TYPE_CHECKING:
    from lmscope.model.transformer import Transformer

PATHS = ("reference", "prepacked", "int8")


@dataclass
class DecodingChoice:
    path: str  # one of PATHS
    reason: str
    step_ms: dict[str, float] = field(default_factory=dict)  # "path@batch" -> ms per step

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _step_ms(model: Transformer, batch: int, steps: int) -> float:
    """Wall ms per cached one-token decoding step at `batch` rows (best of `steps`)."""
    cache = model.new_cache(batch, 8 + steps)
    tokens = torch.arange(8).remainder(model.cfg.vocab_size).expand(batch, 8).to(model.device)
    nxt = tokens[:, -1:]
    best = float("inf")
    with torch.inference_mode():
        model(tokens, cache=cache, last_only=True)
        for _ in range(steps):
            start = time.perf_counter()
            model(nxt, cache=cache)
            best = min(best, time.perf_counter() - start)
    return 1000 * best


def measure_paths(
    model: Transformer,
    candidates: dict[str, PrepackedPath | None],
    batches: tuple[int, ...],
    rounds: int = 3,
    steps: int = 3,
    budget_s: float = 2.0,
) -> dict[str, float]:
    """Best ms per decoding step of each candidate fast path (None: the reference path) at
    each batch size, keyed "path@batch"; the model's own path is restored afterwards. Rounds
    stop once `budget_s` is spent (at least one is run)."""
    previous = model._prepacked
    result: dict[str, float] = {}
    start = time.perf_counter()
    try:
        for _ in range(rounds):  # interleaved: a busy moment on the machine hits every path
            if result and time.perf_counter() - start > budget_s:
                break
            for name, path in candidates.items():
                model._prepacked = path
                for batch in batches:
                    key = f"{name}@{batch}"
                    result[key] = min(result.get(key, float("inf")), _step_ms(model, batch, steps))
    finally:
        model._prepacked = previous
    return {k: round(v, 2) for k, v in result.items()}


def prepare_for_decoding(
    model: Transformer,
    *,
    quantize: str | None = None,
    prepack: bool = True,
    batch: int = 1,
    measure: bool = True,
) -> DecodingChoice:
    """Set up the model's fastest inference path for this machine, in place.

    quantize="int8": int8 weights (raises QuantizationError, naming what is supported, where
    they cannot run). Otherwise, with `prepack`, a float32 CPU model gets whichever of the
    reference and prepacked paths decodes faster here (timed at batch 1 and `batch`; about a
    second); other dtypes and devices keep the reference path.
    """
    batches = (1,) if batch <= 1 else (1, batch)
    if quantize is not None:
        check_quantizable(model, quantize)
        quantize_for_decoding(model, quantize)
        return DecodingChoice("int8", "asked for with --quantize")
    model.disable_prepacked()
    if not prepack:
        return DecodingChoice("reference", "prepacking turned off")
    if not model.enable_prepacked():
        where = f"{str(model.dtype).removeprefix('torch.')} on {model.device.type}"
        return DecodingChoice("reference", f"the prepacked path is float32 CPU only ({where})")
    if not measure or model.cfg.n_ctx < 16:  # (too short a context to time 8 + 3 positions)
        return DecodingChoice("prepacked", "prepacked without measuring")
    packed = model._prepacked
    times = measure_paths(model, {"reference": None, "prepacked": packed}, batches)
    total = {p: sum(times[f"{p}@{b}"] for b in batches) for p in ("reference", "prepacked")}
    best = min(total, key=total.__getitem__)
    model._prepacked = packed if best == "prepacked" else None  # dropped: its memory too
    shown = ", ".join(f"{p} {t:.1f} ms" for p, t in total.items())
    return DecodingChoice(best, f"faster here per step at batch {batches}: {shown}", times)
