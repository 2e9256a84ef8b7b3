"""int8 quality on the real default model: bits per byte within 1% of float32 on WikiText-2,
next-token agreement and KL bounds (the quality the int8 path is sold on)."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from lmscope.model.quantized import quantize_for_decoding, quantized_engine_available
from test_quantized import kl_and_top1

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not quantized_engine_available(), reason="no quantized kernels"),
]


def bits_per_byte(logits: torch.Tensor, ids: torch.Tensor, n_bytes: int) -> float:
    logp = logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])
    return -logp.sum().item() / n_bytes / math.log(2)


def test_int8_bits_per_byte_within_one_percent_of_float32(
    default_model: Any, shared_data: Path
) -> None:
    text = (shared_data / "wikitext2_valid.txt").read_text(encoding="utf-8")[:2400]
    tok, model = default_model.tokenizer, default_model.model
    ids = torch.tensor([tok.encode(text)[:512]])
    n_bytes = len(tok.decode(ids[0, 1:].tolist()).encode("utf-8"))
    quantized = quantize_for_decoding(copy.deepcopy(model))
    with torch.inference_mode():
        want, got = model(ids), quantized(ids)
    fp32, int8 = bits_per_byte(want, ids, n_bytes), bits_per_byte(got, ids, n_bytes)
    assert abs(int8 / fp32 - 1) < 0.01, (fp32, int8)
    kl, top1 = kl_and_top1(want, got)
    assert kl < 0.15 and top1 > 0.75, (kl, top1)
