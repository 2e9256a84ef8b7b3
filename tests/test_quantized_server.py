"""`serve --quantize int8`: completions come from the int8 weights, explanations explain
the same weights (dequantised) and say so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from lmscope.engine import generate
from lmscope.explain import explain
from lmscope.model.quantized import (
    adopt_served_weights,
    quantize_for_decoding,
    quantized_engine_available,
)
from lmscope.serve.routing import ModelSpec
from lmscope.serve.state import ServeSettings
from lmscope.zoo.registry import load
from serve_support import running_server

pytestmark = pytest.mark.skipif(not quantized_engine_available(), reason="no quantized kernels")
PROMPT = "The quick brown fox jumps over"


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[str]:
    settings = ServeSettings(
        models=[ModelSpec("tiny", str(tiny_checkpoint))], max_seq_len=128, quantize="int8"
    )
    with running_server(settings) as base:
        yield base


def test_completions_and_explanations_use_the_int8_weights(
    server: str, tiny_checkpoint: Path
) -> None:
    loaded = load(str(tiny_checkpoint))
    model = adopt_served_weights(quantize_for_decoding(loaded.model))
    want = generate(model, loaded.tokenizer, PROMPT, max_new_tokens=6, temperature=0)
    got = httpx.post(
        server + "/v1/completions",
        json={"prompt": PROMPT, "max_tokens": 6, "temperature": 0},
        timeout=60,
    ).json()
    assert got["choices"][0]["text"] == want.text
    body = httpx.post(server + "/v1/explain", json={"prompt": PROMPT}, timeout=60).json()
    assert body["weights"] == "int8 (dequantized)"
    expected = explain(model, loaded.tokenizer.encode(PROMPT), tokenizer=loaded.tokenizer)
    top = expected.to_dict()["prediction"][0]
    assert body["prediction"][0]["token"] == top["token"]
    assert body["prediction"][0]["prob"] == pytest.approx(top["prob"], abs=1e-5)
    with torch.inference_mode():  # and they are not the float32 weights
        plain = load(str(tiny_checkpoint)).model
        ids = torch.tensor([loaded.tokenizer.encode(PROMPT)])
        assert not torch.equal(plain(ids), model.run_with_trace(ids).logits)
