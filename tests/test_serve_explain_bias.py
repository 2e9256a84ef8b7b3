"""POST /v1/explain/bias and the route check of POST /v1/explain over real HTTP on the tiny
model, against the explain library run in-process on the same model and probes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI

from lmscope.explain import explain, route_faithfulness
from lmscope.explain.bias import run_probes
from lmscope.explain.bias_probes import BUILTIN, parse_probe
from lmscope.model.hooks import hooks
from lmscope.serve import serving_bias
from lmscope.serve.app import create_app
from lmscope.serve.routing import ModelSpec
from lmscope.serve.serving_explain import isolated
from lmscope.serve.state import ServeSettings
from lmscope.zoo.registry import load
from serve_support import running_app

PROBE = {
    "name": "toy",
    "template": "The {group} went to the {place} and",
    "groups": {"a": ["cat", "dog", "bird"], "b": ["man", "woman"]},
    "slots": {"place": ["park", "shop"]},
    "targets": [" the", " ran away"],
}


@pytest.fixture(scope="module")
def served(tiny_checkpoint: Path) -> Iterator[tuple[str, FastAPI]]:
    settings = ServeSettings(models=[ModelSpec("tiny", str(tiny_checkpoint))], max_seq_len=128)
    app = create_app(settings)
    with running_app(app) as base:
        yield base, app


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path) -> Any:
    return load(str(tiny_checkpoint))


def post(base: str, path: str, payload: dict[str, Any]) -> httpx.Response:
    body = json.dumps({"model": "tiny", **payload}).encode()
    headers = {"content-type": "application/json"}
    return httpx.post(base + path, content=body, headers=headers, timeout=120)


def refused(base: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = post(base, "/v1/explain/bias", payload)
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def test_bias_equals_the_library(served: tuple[str, FastAPI], reference: Any) -> None:
    base, _ = served
    response = post(base, "/v1/explain/bias", {"probes": [PROBE], "n_boot": 200, "seed": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = run_probes(
        reference.model, reference.tokenizer.encode, [parse_probe(PROBE)], n_boot=200, seed=3
    ).to_dict()
    assert body["n_prompts"] == 10 and body["model"] == "tiny"
    assert body["meta"]["n_boot"] == 200 and body["meta"]["seed"] == 3
    (got,) = body["probes"]
    (want,) = expected["probes"]
    assert got["groups"] == {"a": 6, "b": 4} and got["reference"] == "a"
    # Same model, same prompts, same seed: the same numbers (JSON floats round-trip exactly).
    assert got["targets"] == want["targets"]
    assert got["components"] == want["components"]
    gap = got["targets"][1]["gaps"]["b"]
    assert gap["ci"][0] <= gap["gap"] <= gap["ci"][1]
    assert len(got["components"]["b"]["heads"]) == 5


def test_builtin_probes_without_components(served: tuple[str, FastAPI]) -> None:
    base, _ = served
    body = post(base, "/v1/explain/bias", {"n_boot": 50, "components": False}).json()
    assert [p["name"] for p in body["probes"]] == [p["name"] for p in BUILTIN]
    assert body["n_prompts"] == sum(sum(p["groups"].values()) for p in body["probes"])
    assert all(p["components"] == {} for p in body["probes"])


def test_bias_bad_input_names_its_param(served: tuple[str, FastAPI]) -> None:
    base, _ = served
    many = {**PROBE, "slots": {"place": [f"p{i}" for i in range(41)]}}  # 5 x 41 = 205 prompts
    error = refused(base, {"probes": [many]})
    assert error["param"] == "probes" and "205 prompts" in error["message"]
    assert error["code"] == "too_many_prompts"
    error = refused(base, {"probes": [PROBE, {**PROBE, "template": "The {group} in {town}"}]})
    assert error["param"] == "probes.[1]" and "{town}" in error["message"]
    assert error["code"] == "invalid_probe"
    error = refused(base, {"probes": [{**PROBE, "template": "The {group:>999999999}"}]})
    assert error["param"] == "probes.[0].template"
    error = refused(base, {"probes": [{**PROBE, "template": "The {person}"}]})
    assert error["param"] == "probes.[0].template"  # the schema's pattern: no {group} slot
    error = refused(base, {"probes": [{**PROBE, "groups": {"a": ["x"]}}]})
    assert error["param"].startswith("probes.[0].groups")
    error = refused(base, {"probes": [{**PROBE, "groups": {"a": ["x"], "b": []}}]})
    assert error["param"].startswith("probes.[0].groups")
    error = refused(base, {"probes": [{**PROBE, "template": "x " * 200 + "{group}"}]})
    assert error["param"] == "probes.[0].template" and error["code"] == "context_length_exceeded"
    error = refused(base, {"probes": "all"})
    assert error["param"].startswith("probes")
    error = refused(base, {"n_boot": 0})
    assert error["param"] == "n_boot"


def test_bias_stops_at_the_request_timeout(
    served: tuple[str, FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, app = served
    real = serving_bias.run_probe
    calls: list[int] = []

    def slow(*args: Any, **kwargs: Any) -> Any:
        # Wait for the deadline (not a fixed time): the library must then stop the probe.
        calls.append(1)
        while not kwargs["should_stop"]():
            time.sleep(0.01)
        return real(*args, **kwargs)

    monkeypatch.setattr(serving_bias, "run_probe", slow)
    monkeypatch.setattr(app.state.lm.settings, "request_timeout", 1.0)
    response = post(base, "/v1/explain/bias", {"n_boot": 10})
    assert response.status_code == 408, response.text
    assert response.json()["error"]["code"] == "timeout"
    assert calls == [1]  # the second probe never started


def test_route_check_equals_the_library(served: tuple[str, FastAPI], reference: Any) -> None:
    base, _ = served
    prompt = "The quick brown fox jumps over"
    plain = post(base, "/v1/explain", {"prompt": prompt, "saliency": False}).json()
    assert plain["route_check"] is None
    # A random tiny model spreads its flow thin: a low tau puts heads on the route.
    asked = {"prompt": prompt, "saliency": False, "route_check": True, "tau": 0.01}
    body = post(base, "/v1/explain", asked)
    assert body.status_code == 200, body.text
    check = body.json()["route_check"]
    ex = explain(reference, prompt, saliency=False, tau=0.01)
    want = route_faithfulness(
        reference.model, ex.tokens, ex.routes, ex.prediction[0].token
    ).to_dict()
    assert check["target"] == want["target"] == body.json()["prediction"][0]["token"]
    assert check["components"] == want["components"] and check["components"]
    for key in ("clean_logprob", "route_drop", "random_drop", "score"):
        assert check[key] == pytest.approx(want[key], abs=1e-5), key
    assert check["random_drops"] == pytest.approx(want["random_drops"], abs=1e-5)
    assert check["target_text"] == reference.tokenizer.decode([want["target"]])
    assert "route_check" in body.json()["timings"]


def test_isolated_copy_shares_weights_but_not_hooks(reference: Any) -> None:
    model = reference.model
    copy = isolated(model)
    assert all(a is b for a, b in zip(model.parameters(), copy.parameters(), strict=True))
    tokens = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = model(tokens)

        def zero(x: torch.Tensor, _name: str) -> torch.Tensor:
            return torch.zeros_like(x)

        with hooks(copy, [("blocks.0.hook_attn_out", zero)]):
            ablated = copy(tokens)
            during = model(tokens)  # another request on the served model meanwhile
    assert torch.equal(before, during)
    assert not torch.equal(before, ablated)
